"""Blending overlapping tile outputs into finished raster rows, strip by strip.

:class:`StripMosaic` keeps a weighted sum for the raster rows that some unfinished
tile still touches: a band about one tile high across the raster's width, whatever
the raster's height. Rows are handed out (:meth:`pop_rows`) as soon as no later tile
can touch them, so memory does not grow with the raster's height.

The blend is ``Σ wᵢ·outᵢ / Σ wᵢ`` with the weights of :func:`tiling.blend_window`.
The weight sum needs no buffer: the window is an outer product of 1-D profiles and
the grid a product of 1-D grids, so ``Σ wᵢ = coverage_y[y] · coverage_x[x]``. That is
exact for every pixel whose covering tiles were all added, which holds for every
valid pixel: a tile is skipped only when all its pixels are nodata. Outputs of
identical tiles give back exactly their value (the identity round trip).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .tiling import Chip, TileGrid, blend_profile, coverage

__all__ = ["BlendWeights", "StripMosaic"]


class BlendWeights(NamedTuple):
    """The weights of a grid's blend: one tile's window, and the sums of the windows
    along each axis (their outer product is ``Σ wᵢ`` at every pixel)."""

    window: np.ndarray  # float32 (tile_size, tile_size): the weights of one tile's output
    cov_y: np.ndarray  # float64 (height,): Σ of the tiles' row profiles
    cov_x: np.ndarray  # float32 (width,): Σ of the tiles' column profiles

    @classmethod
    def of(cls, grid: TileGrid) -> BlendWeights:
        profile = blend_profile(grid.tile_size, grid.overlap)
        return cls(np.outer(profile, profile).astype(np.float32), coverage(grid.row_starts, grid.height, profile),
                   coverage(grid.col_starts, grid.width, profile).astype(np.float32))

    def weight_sum(self, first: int, n: int) -> np.ndarray:
        """``Σ wᵢ`` of raster rows ``[first, first + n)``: float32 (n, width)."""
        return np.outer(self.cov_y[first : first + n].astype(np.float32), self.cov_x)


class StripMosaic:
    """Accumulates the tile outputs of ``grid`` in row order.

    The buffer is a ring of ``tile_size`` rows (raster row ``y`` lives in slot
    ``y % capacity``), so handing rows out never moves the others.
    """

    def __init__(self, grid: TileGrid, channels: int = 3) -> None:
        self.grid = grid
        self.height, self.width, self.channels = grid.height, grid.width, channels
        self.weights = BlendWeights.of(grid)
        self.top = 0  # first raster row held (all rows above are handed out)
        self.bottom = 0  # one past the last raster row touched so far
        self._sum = np.zeros((channels, min(grid.tile_size, grid.height), grid.width), dtype=np.float32)

    @property
    def rows_held(self) -> int:
        return self.bottom - self.top

    def _slots(self, r0: int, r1: int):
        """(slot_lo, slot_hi, offset) pieces of raster rows [r0, r1) in the ring."""
        cap = self._sum.shape[1]
        while r0 < r1:
            lo = r0 % cap
            n = min(r1 - r0, cap - lo)
            yield lo, lo + n, r0
            r0 += n

    def _ensure(self, bottom: int) -> None:
        if bottom - self.top > self._sum.shape[1]:
            # Only when a caller adds more than a tile row ahead: re-lay the ring.
            old = self._sum
            self._sum = np.zeros((self.channels, bottom - self.top, self.width), np.float32)
            old_cap, new_cap = old.shape[1], self._sum.shape[1]
            for r in range(self.top, self.bottom):
                self._sum[:, r % new_cap] = old[:, r % old_cap]
        self.bottom = max(self.bottom, bottom)

    def add(self, chip: Chip, output: np.ndarray) -> None:
        """Blend one tile's output (channels, size, size), float, into the buffer.

        Only the part of the tile that lies on the raster is kept.
        """
        r0, c0 = max(chip.row_off, 0), max(chip.col_off, 0)
        r1 = min(chip.row_off + chip.size, self.height)
        c1 = min(chip.col_off + chip.size, self.width)
        if r1 <= r0 or c1 <= c0:
            return
        if r0 < self.top:
            raise ValueError(f"{chip} reaches row {r0}, already handed out (top {self.top})")
        self._ensure(r1)
        tc = c0 - chip.col_off
        for lo, hi, r in self._slots(r0, r1):
            tr = r - chip.row_off
            w = self.weights.window[tr : tr + hi - lo, tc : tc + c1 - c0]
            self._sum[:, lo:hi, c0:c1] += output[:, tr : tr + hi - lo, tc : tc + c1 - c0] * w

    def pop_rows(self, upto: int) -> tuple[int, np.ndarray, np.ndarray]:
        """Hand out rows ``[top, upto)``: (first row, blended (C, n, width), weight (n, width)).

        Rows no tile was added to (all nodata) come back as 0; the caller masks them.
        """
        upto = min(upto, self.height)
        n = max(0, upto - self.top)
        self._ensure(self.top + n)
        weight = self.weights.weight_sum(self.top, n)
        blended = np.empty((self.channels, n, self.width), np.float32)
        for lo, hi, r in self._slots(self.top, self.top + n):
            i = r - self.top
            np.divide(self._sum[:, lo:hi], weight[i : i + hi - lo], out=blended[:, i : i + hi - lo])
            self._sum[:, lo:hi] = 0
        first = self.top
        self.top += n
        return first, blended, weight
