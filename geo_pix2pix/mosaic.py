"""Blending overlapping tile outputs into finished raster rows, strip by strip.

:class:`StripMosaic` keeps a weighted sum and a weight sum for the raster rows that
some unfinished tile still touches: a band a few tiles high across the raster's width,
whatever the raster's height. Rows are handed out (:meth:`pop_rows`) as soon as no
later tile can touch them, so memory does not grow with the raster's height.

The blend is ``Σ wᵢ·outᵢ / Σ wᵢ`` with the weights of :func:`tiling.blend_window`;
outputs of identical tiles give back exactly their value (the identity round trip).
"""

from __future__ import annotations

import numpy as np

from .tiling import Chip

__all__ = ["StripMosaic"]


class StripMosaic:
    """Accumulates tile outputs for a ``height`` × ``width`` raster in row order."""

    def __init__(self, height: int, width: int, window: np.ndarray, channels: int = 3) -> None:
        self.height, self.width, self.channels = height, width, channels
        self.window = window.astype(np.float32)
        self.top = 0  # first raster row held in the buffers (all rows above are popped)
        self._sum = np.zeros((channels, 0, width), dtype=np.float32)
        self._wsum = np.zeros((0, width), dtype=np.float32)

    @property
    def rows_held(self) -> int:
        return self._wsum.shape[0]

    def _grow(self, bottom: int) -> None:
        need = bottom - self.top - self.rows_held
        if need > 0:
            self._sum = np.concatenate(
                [self._sum, np.zeros((self.channels, need, self.width), np.float32)], axis=1)
            self._wsum = np.concatenate([self._wsum, np.zeros((need, self.width), np.float32)])

    def add(self, chip: Chip, output: np.ndarray) -> None:
        """Blend one tile's output (channels, size, size), float, into the buffers.

        Only the part of the tile that lies on the raster is kept.
        """
        r0, c0 = max(chip.row_off, 0), max(chip.col_off, 0)
        r1 = min(chip.row_off + chip.size, self.height)
        c1 = min(chip.col_off + chip.size, self.width)
        if r1 <= r0 or c1 <= c0:
            return
        if r0 < self.top:
            raise ValueError(f"{chip} reaches row {r0}, already handed out (top {self.top})")
        self._grow(r1)
        tr, tc = r0 - chip.row_off, c0 - chip.col_off
        w = self.window[tr : tr + r1 - r0, tc : tc + c1 - c0]
        out = output[:, tr : tr + r1 - r0, tc : tc + c1 - c0]
        br0, br1 = r0 - self.top, r1 - self.top
        self._sum[:, br0:br1, c0:c1] += out * w
        self._wsum[br0:br1, c0:c1] += w

    def pop_rows(self, upto: int) -> tuple[int, np.ndarray, np.ndarray]:
        """Hand out rows ``[top, upto)``: (first row, blended (C, n, width), weight (n, width)).

        Pixels with zero weight (no tile added there: skipped as all-nodata) come back
        as 0 with weight 0; the caller masks them.
        """
        upto = min(upto, self.height)
        n = max(0, upto - self.top)
        self._grow(self.top + n)
        acc, wsum = self._sum[:, :n], self._wsum[:n]
        with np.errstate(invalid="ignore", divide="ignore"):
            blended = np.where(wsum > 0, acc / np.maximum(wsum, 1e-30), 0.0).astype(np.float32)
        first = self.top
        out_w = wsum.copy()
        self._sum = self._sum[:, n:].copy()
        self._wsum = self._wsum[n:].copy()
        self.top += n
        return first, blended, out_w
