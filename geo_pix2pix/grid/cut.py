"""Model inputs cut from a reader, one strip of rows per tile row, with the one nodata rule.

A *reader* is anything with ``height``, ``width`` and ``read(row_off, col_off, height,
width) -> (rgb uint8 (3, h, w), valid bool (h, w))`` that fills pixels beyond its edges
by reflection and marks them invalid: :class:`geo_pix2pix.io.read.MapRaster` for a
file, :class:`ArrayReader` for an image in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .tiling import Chip, TileGrid, clip_window, reflect_window

__all__ = ["ArrayReader", "ChipFilter", "Strip", "cut_strip", "fill_nodata"]

#: Which chips to run (a subset of the grid); None runs every chip with a valid pixel.
ChipFilter = Callable[[Chip], bool] | None


class ArrayReader:
    """A reader over an in-memory image: rgb uint8 (3, H, W), optional valid (H, W)."""

    def __init__(self, rgb: np.ndarray, valid: np.ndarray | None = None) -> None:
        if rgb.ndim != 3 or rgb.shape[0] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8 of shape (3, H, W), not {rgb.dtype} {rgb.shape}")
        self.rgb = rgb
        self.valid = valid
        self.height, self.width = rgb.shape[1:]

    def read(self, row_off: int, col_off: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        rgb, inside = reflect_window(self.rgb, row_off, col_off, height, width)
        if self.valid is not None:
            v, _ = reflect_window(self.valid[None], row_off, col_off, height, width)
            inside &= v[0]
        return rgb, inside


def fill_nodata(tile: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """The one rule for nodata pixels inside a model input: (3, h, w) uint8 with the
    ``missing`` pixels (bool (h, w)) filled from the tile's valid pixels.

    Each missing pixel takes the valid pixel mirrored across its nearest valid pixel,
    or that nearest valid pixel where the mirror is missing or off the tile. Along a
    straight nodata edge this is the reflection render pads a raster's own edges with,
    so the model sees a collar as it sees the edge of the raster cropped to its data.
    The output is masked afterwards. A tile with no valid pixel is not filled: it is
    never rendered.
    """
    if not missing.any() or missing.all():
        return tile
    from scipy import ndimage

    h, w = missing.shape
    ny, nx = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
    yy, xx = np.mgrid[0:h, 0:w]
    my, mx = 2 * ny - yy, 2 * nx - xx
    ok = (my >= 0) & (my < h) & (mx >= 0) & (mx < w)
    ok[ok] = ~missing[my[ok], mx[ok]]
    sy, sx = np.where(ok, my, ny), np.where(ok, mx, nx)
    return tile[:, sy, sx]


class Strip(NamedTuple):
    """Tile row ``r`` read: its model inputs and the mask of its raster rows."""

    tiles: list[tuple[Chip, np.ndarray]]  # (chip, uint8 (3, t, t)) in column order
    valid: np.ndarray  # bool (rows of the tile row inside the raster, raster width)


def cut_strip(reader, grid: TileGrid, r: int, keep: ChipFilter = None) -> Strip:
    """Read tile row ``r`` as one strip of rows and cut its tiles: every tile with a valid
    pixel (and chosen by ``keep``), its nodata filled (:func:`fill_nodata`).

    Pixels past the raster's edges are reflections of the raster (the reader pads so);
    a reflection of a nodata pixel is nodata too and is filled like it.
    """
    t = grid.tile_size
    x0, x1 = grid.col_starts[0], grid.col_starts[-1] + t
    row_off = grid.row_starts[r]
    strip, valid = reader.read(row_off, x0, t, x1 - x0)
    # What each pixel shows is valid: the raster's mask, reflected as the pixels are.
    (r0, r1, c0, c1), pads = clip_window(row_off, x0, t, x1 - x0, reader.height, reader.width)
    (top, _), (left, _) = pads
    core = valid[top : top + r1 - r0, left : left + c1 - c0]
    content = None if core.all() else np.pad(core, pads, mode="reflect")
    out = []
    for chip in grid.row(r):
        c = chip.col_off - x0
        if not valid[:, c : c + t].any() or (keep is not None and not keep(chip)):
            continue  # all nodata (or outside the raster), or not asked for: no model call
        tile = strip[:, :, c : c + t].copy()  # a copy: frees the strip
        if content is not None:
            tile = fill_nodata(tile, ~content[:, c : c + t])
        out.append((chip, tile))
    return Strip(out, core)
