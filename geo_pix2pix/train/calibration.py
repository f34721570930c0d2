"""The map tiles int8 inference is calibrated on (:func:`..model.accel.int8.calibrate`).

Here rather than beside the int8 code: a paired folder's training split and the resize
to the model's tile size belong to the layers above the model (docs/architecture.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..errors import OptionError
from .data import PairSource, split_names

__all__ = ["calibration_batches"]

#: The model's tile side, and the tiles per calibration forward pass.
TILE_SIZE, BATCH_SIZE = 256, 8


def _spread(items: list, limit: int) -> list:
    """At most ``limit`` of ``items``, evenly spread over them (first and last included)."""
    if len(items) <= limit:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def calibration_batches(data: Sequence[str | os.PathLike] | PairSource, *, bands: str | Sequence[int] | None = None,
                        limit: int = 1024, label: str | None = None) -> list[np.ndarray]:
    """Batches of uint8 (N, 3, 256, 256) map tiles for :func:`calibrate`, at most ``limit`` tiles.

    ``data``: map rasters or images (each gives an equal share of tiles, read evenly spread
    over it, ``bands`` as R,G,B), or a paired source, whose training split (file-name hash,
    10 % held out) gives its maps, resized. ``label`` names ``data`` in the error when no
    tile is found [default: the paths].
    """
    if isinstance(data, PairSource):
        from ..evaluate.evaluation import resize

        train_idx, _ = split_names(data.names, 0.1)
        tiles = [resize(data.read(i)[0], TILE_SIZE).transpose(2, 0, 1) for i in _spread(train_idx, limit)]
    else:
        from ..io.read import map_tiles

        per_map = -(-limit // max(len(data), 1))  # each map's share, read evenly spread over it
        tiles = [t for path in data for t in map_tiles(path, TILE_SIZE, bands=bands, limit=per_map)]
    if not tiles:
        where = label or ", ".join(map(str, data))
        raise OptionError(f"no map tiles found in {where}: give map rasters or images")
    tiles = _spread(tiles, limit)
    return [np.stack(tiles[i : i + BATCH_SIZE]) for i in range(0, len(tiles), BATCH_SIZE)]
