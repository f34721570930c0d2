"""The values a ``tiles`` run takes and returns: options, result, the copy "model"."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import OptionError
from .imaging import FORMATS
from .tilemath import ChipGrid

__all__ = ["CopyModel", "DEFAULT_MAX_TILES", "TileOptions", "TilesResult"]

#: Tiles (every level) above which a run is refused unless --max-tiles says otherwise:
#: 10⁸ tiles is a few TB of output and weeks of rendering on one GPU (a whole-world box
#: at zoom 15 is 1.4·10⁹).
DEFAULT_MAX_TILES = 100_000_000


class CopyModel(nn.Module):
    """No model: tiles are the source's own pixels (cutting a map raster into map tiles)."""

    identity = "copy"
    ground_resolution = None
    tile_multiple = 1
    precision = "fp32"

    @property
    def provenance(self) -> dict:
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class TilesResult:
    """What :func:`make_tiles` did, counted over the requested tiles."""

    dest: Path
    render_zoom: int
    total: int
    rendered: int
    unchanged: int
    empty: int
    failed: int
    rerun: bool  # DEST already held a cache made by geo-pix2pix
    failures: tuple[tuple[str, str], ...]  # (z/x/y, reason), the first few
    seconds: float
    note: str = ""  # what else the run did to DEST (an archive published again…)

    def summary(self) -> str:
        verb = "regenerated" if self.rerun else "rendered"
        return (f"{self.rendered} {verb}, {self.unchanged} skipped as unchanged, {self.empty} skipped "
                f"as empty, {self.failed} failed ({self.total} tiles, model at zoom {self.render_zoom}, "
                f"{self.seconds:.1f} s)" + (f"; {self.note}" if self.note else ""))


@dataclass(frozen=True)
class TileOptions:
    """The options of a run, with their defaults (each is a ``tiles`` CLI option)."""

    fmt: str = "png"  # png, jpeg or webp
    quality: int = 85  # JPEG/WebP quality
    meta_size: int = 8  # metatile side in tiles: renderd's METATILE, MapProxy's meta_size
    buffer: int = 32  # px of rendered context around every tile border (chips overlap 2×)
    render_zoom: int | None = None  # None: the zoom matching the model's ground resolution
    workers: int = 1  # processes running metatiles
    force: bool = False  # regenerate every tile
    overwrite: bool = False  # write into a DEST not made by geo-pix2pix
    device: str | None = None
    bands: str | None = None  # raster source: bands read as R,G,B
    name: str | None = None  # metadata name (default: DEST's name)
    attribution: str | None = None  # default: "synthetic imagery…; map data: <the source's attribution>"
    max_tiles: int | None = DEFAULT_MAX_TILES  # refuse larger runs at once (None or 0: no limit)
    url_base: str | None = None  # XYZ DEST: tilejson.json lists absolute tile URLs under it

    def __post_init__(self) -> None:
        if self.max_tiles is not None and (isinstance(self.max_tiles, bool) or not isinstance(self.max_tiles, int)
                                           or self.max_tiles < 0):
            raise OptionError(f"--max-tiles {self.max_tiles!r} must be a whole number of tiles, 0 for no limit")
        if self.url_base is not None and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\s]+", self.url_base):
            raise OptionError(f"--url-base {self.url_base!r} must be an absolute URL, e.g. "
                              "https://tiles.example.org/aerial (the folder DEST is served as)")
        if self.fmt not in FORMATS:
            raise OptionError(f"--format {self.fmt!r} must be one of {', '.join(FORMATS)}")
        if self.workers < 1:
            raise OptionError(f"--workers {self.workers} must be at least 1")
        if not 1 <= self.quality <= 100:
            raise OptionError(f"--quality {self.quality} must be between 1 and 100")
        ChipGrid(self.buffer)  # validates the buffer
