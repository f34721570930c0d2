"""Tiling maths: where the tiles of a raster go and how much each pixel trusts them.

Pure functions of sizes and numbers; nothing here reads a file or runs a model.

The raster (``height`` × ``width`` pixels) is covered by square tiles of ``tile_size``
that overlap by at least ``overlap`` pixels. The grid extends ``overlap // 2`` pixels
beyond every edge of the raster (the reader fills that margin by reflection), so a
pixel on the raster's edge sits inside a tile, not on its border, and gets the same
treatment as an interior pixel. Along each axis the tiles are spread evenly, so the
actual overlap is never less than asked and the grid never reaches further than
needed. A raster no larger than a tile gets one tile (padded by reflection if
smaller): that is exactly how the model was trained.

Each tile's output is weighted by :func:`blend_window`: 1 in the middle, falling
smoothly (raised cosine) towards the tile's borders but never to zero. Overlapping
outputs are averaged with these weights, so no tile border is a visible seam. The
weights of all tiles covering a pixel are normalised to sum to one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "Chip",
    "DEFAULT_OVERLAP",
    "TileGrid",
    "axis_starts",
    "blend_profile",
    "blend_window",
    "clip_window",
    "coverage",
    "pad_reflect",
    "reflect_window",
]

#: Default overlap between neighbouring 256 px tiles, in pixels. The U-Net's
#: receptive field covers the whole tile (766 px for 8 stride-2 layers), so the field
#: alone would ask for overlap everywhere; what matters in practice is how far from a
#: tile border the output stops depending on the border's zero padding. Measured on
#: the default model (docs/tiling.md): differences between a pixel rendered inside a
#: tile and the same pixel near a tile's border fall below 1 grey level beyond about
#: 32 px from the border, so 64 px of overlap (32 px each side) hides the border,
#: and the raised-cosine weights blend the rest. Cost: 1.78× the tiles of no overlap.
DEFAULT_OVERLAP = 64


class Chip(NamedTuple):
    """One tile of the grid, in raster pixel coordinates (may reach past the edges)."""

    index: int  # position in the grid's iteration order (row-major)
    row: int  # tile row in the grid
    col: int  # tile column in the grid
    row_off: int  # first raster row covered (negative in the top margin)
    col_off: int  # first raster column covered
    size: int  # tile height and width


def axis_starts(length: int, tile_size: int, overlap: int) -> list[int]:
    """Tile start offsets along one axis of ``length`` pixels.

    The covered span is ``[-m, length + m)`` with ``m = overlap // 2``, stretched to at
    least one tile; tiles are spread evenly over it so neighbours overlap by at least
    ``overlap`` pixels.
    """
    if length < 1:
        raise ValueError(f"length={length} must be at least 1")
    if tile_size < 1:
        raise ValueError(f"tile_size={tile_size} must be at least 1")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap={overlap} must be in [0, tile_size={tile_size})")
    if length <= tile_size:
        # One tile, the raster centred in it: a raster that fits in a tile is rendered
        # as one tile, as the model was trained, not as blended reflected copies.
        return [-((tile_size - length) // 2)]
    m = overlap // 2
    span = length + 2 * m
    start = -m
    stride = tile_size - overlap
    n = math.ceil((span - tile_size) / stride) + 1
    last = start + span - tile_size
    # Even spread: n tiles from `start` to `last` inclusive, integer positions.
    return [start + (i * (last - start)) // (n - 1) for i in range(n)]


def blend_profile(tile_size: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """1-D weights (float64, length ``tile_size``) across a tile: see :func:`blend_window`."""
    ramp_len = min(overlap, tile_size // 2)
    w = np.ones(tile_size, dtype=np.float64)
    if ramp_len > 0:
        t = (np.arange(ramp_len) + 0.5) / ramp_len  # (0, 1)
        ramp = floor + (1 - floor) * 0.5 * (1 - np.cos(np.pi * t))
        w[:ramp_len] = ramp
        w[tile_size - ramp_len :] = ramp[::-1]
    return w


def blend_window(tile_size: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """2-D weights (float64, ``tile_size`` × ``tile_size``) for blending a tile's output.

    Along each axis the weight rises as a raised cosine from ``floor`` at the tile's
    border to 1 at ``overlap`` pixels in, and stays 1 in the middle; the 2-D window is
    the outer product. With ``overlap == 0`` it is all ones. ``floor`` > 0 keeps every
    pixel's total weight positive even where only a tile's border covers it.

    Because the window is an outer product and the grid a product of two 1-D grids,
    the total weight at a pixel is ``coverage(rows)[y] · coverage(cols)[x]``
    (:func:`coverage`): the mosaic needs no weight buffer.
    """
    w = blend_profile(tile_size, overlap, floor)
    return np.outer(w, w)


def coverage(starts: list[int], length: int, profile: np.ndarray) -> np.ndarray:
    """Σ of the 1-D blend profiles of tiles starting at ``starts``, over ``[0, length)``."""
    total = np.zeros(length, dtype=np.float64)
    size = len(profile)
    for s in starts:
        a, b = max(s, 0), min(s + size, length)
        if b > a:
            total[a:b] += profile[a - s : b - s]
    return total


def clip_window(row_off: int, col_off: int, height: int, width: int,
                raster_height: int, raster_width: int) -> tuple[tuple[int, int, int, int], tuple]:
    """The part of a window inside the raster, and the padding that restores the window.

    Returns ``((r0, r1, c0, c1), ((top, bottom), (left, right)))``.
    """
    r0, c0 = max(row_off, 0), max(col_off, 0)
    r1, c1 = min(row_off + height, raster_height), min(col_off + width, raster_width)
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"window ({row_off}, {col_off}, {height}, {width}) misses the "
                         f"{raster_width}×{raster_height} raster")
    return (r0, r1, c0, c1), ((r0 - row_off, row_off + height - r1), (c0 - col_off, col_off + width - c1))


def pad_reflect(data: np.ndarray, pads: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Pad (C, h, w) data by reflection; also return the bool mask of the real pixels."""
    inside = np.ones(data.shape[1:], dtype=bool)
    if any(p for pair in pads for p in pair):
        data = np.pad(data, ((0, 0),) + tuple(pads), mode="reflect")
        inside = np.pad(inside, pads, mode="constant", constant_values=False)
    return data, inside


def reflect_window(arr: np.ndarray, row_off: int, col_off: int, height: int, width: int):
    """Cut a window from ``arr`` (C, H, W), reflecting it beyond the edges.

    Returns (window (C, height, width), inside bool (height, width)).
    """
    (r0, r1, c0, c1), pads = clip_window(row_off, col_off, height, width, *arr.shape[1:])
    return pad_reflect(arr[:, r0:r1, c0:c1], pads)


class TileGrid:
    """The tiles covering a ``height`` × ``width`` raster, row by row.

    Iterating yields :class:`Chip` values; ``len(grid)`` is the number of tiles, so a
    progress bar knows its total (as torchgeo's ``GridGeoSampler`` does). The starts
    along each axis are :func:`axis_starts`, or given (``row_starts``/``col_starts``:
    e.g. the world-anchored chip grid of the XYZ tiles); ``overlap`` then only sets the
    blend's ramp.
    """

    def __init__(self, height: int, width: int, tile_size: int = 256, overlap: int = 64, *,
                 row_starts: Sequence[int] | None = None, col_starts: Sequence[int] | None = None) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"raster size {width}×{height} must be at least 1×1")
        self.height, self.width = int(height), int(width)
        self.tile_size, self.overlap = int(tile_size), int(overlap)
        self.row_starts = _given_starts(row_starts, self.height, self.tile_size, self.overlap)
        self.col_starts = _given_starts(col_starts, self.width, self.tile_size, self.overlap)

    @property
    def shape(self) -> tuple[int, int]:
        """(tile rows, tile columns)."""
        return len(self.row_starts), len(self.col_starts)

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def __iter__(self) -> Iterator[Chip]:
        for r in range(len(self.row_starts)):
            yield from self.row(r)

    def row(self, r: int) -> list[Chip]:
        ncols = len(self.col_starts)
        y = self.row_starts[r]
        return [Chip(r * ncols + c, r, c, y, x, self.tile_size) for c, x in enumerate(self.col_starts)]

    def rows_done_after(self, r: int) -> int:
        """Raster rows that no tile row after ``r`` touches: they are final once tile
        row ``r`` is blended (rows ``[0, result)``)."""
        if r + 1 >= len(self.row_starts):
            return self.height
        return max(0, min(self.height, self.row_starts[r + 1]))

    def row_groups(self, min_tiles: int) -> Iterator[range]:
        """Consecutive tile rows in groups of at least ``min_tiles`` tiles (the last may
        hold fewer): the unit of work of a Dask task."""
        k = max(1, -(-min_tiles // self.shape[1]))
        return (range(r, min(r + k, self.shape[0])) for r in range(0, self.shape[0], k))

    def __repr__(self) -> str:
        return (f"TileGrid({self.height}×{self.width} px, tile {self.tile_size}, "
                f"overlap {self.overlap}: {self.shape[0]}×{self.shape[1]} tiles)")


def _given_starts(starts: Sequence[int] | None, length: int, tile_size: int, overlap: int) -> list[int]:
    """:func:`axis_starts`, or ``starts`` checked: increasing, covering ``[0, length)`` without a gap."""
    if starts is None:
        return axis_starts(length, tile_size, overlap)
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap={overlap} must be in [0, tile_size={tile_size})")
    out = [int(s) for s in starts]
    if not out or not -tile_size < out[0] <= 0 or not length - tile_size <= out[-1] < length:
        raise ValueError(f"tile starts {out} must cover [0, {length}) with tiles of {tile_size}, each reaching into it")
    for a, b in zip(out, out[1:], strict=False):
        if not a < b <= a + tile_size:
            raise ValueError(f"tile starts {a}, {b} must increase by 1 to {tile_size} (no gap between tiles)")
    return out
