"""The one blend: tile outputs → weighted sums → finished uint8 rows, one tile row at a time.

A pixel's value is ``Σ wᵢ·outᵢ / Σ wᵢ`` over the tiles covering it, with the weights of
:func:`.tiling.blend_window`. The weight sum needs no buffer: the window is an outer
product of 1-D profiles and the grid a product of 1-D grids, so ``Σ wᵢ = cov_y[y] ·
cov_x[x]`` (:class:`BlendWeights`). That is exact for every pixel all of whose covering
tiles were run, which holds for every valid pixel (a tile is skipped only when all its
pixels are nodata) and for the pixels of a chosen chip subset (see :mod:`.core`).

The sums are float32, added in row-major tile order; float addition is not
associative, so every caller must add in that order to get the same bytes. The unit of
work is one tile row, :class:`RowBlend`, whose :class:`RowResult` splits its raster
rows three ways (:func:`row_bands`):

- *top* rows, also covered by an earlier tile row: each tile's product on its own, for
  the merger to add to the running sum in column order;
- *own* rows, covered by this tile row only: final, blended and rounded to uint8;
- *bottom* rows, first covered here and also by a later tile row: the partial sum from
  zero, which is exactly the running sum there (``0 + x == x``).

:class:`RowMerger` takes the results in tile-row order and hands out finished rows. The
local pipeline and the Dask tasks both make their rows with this code, so their
byte-identity holds by construction, whichever process computed a tile row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .tiling import Chip, TileGrid, blend_profile, coverage

__all__ = ["BlendWeights", "RowBands", "RowBlend", "RowMerger", "RowResult", "row_bands", "to_uint8"]


def to_uint8(blended: np.ndarray) -> np.ndarray:
    """Network scale [-1, 1] → uint8, rounding to nearest (exact for identity output)."""
    out = blended + 1.0
    out *= 127.5
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


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

    def finish(self, sums: np.ndarray, first: int) -> np.ndarray:
        """uint8 rows from the weighted sums (3, n, width) of raster rows from ``first``."""
        return to_uint8(sums / self.weight_sum(first, sums.shape[1]))


class RowBands(NamedTuple):
    """Raster rows of tile row ``r``, clipped to the raster: ``start ≤ top_end ≤ own_end ≤ end``."""

    start: int  # first raster row the tile row covers
    top_end: int  # rows [start, top_end) are also covered by an earlier tile row
    own_end: int  # rows [top_end, own_end) by this tile row only
    end: int  # rows [own_end, end) are first covered here, and also by a later tile row


def row_bands(grid: TileGrid, r: int) -> RowBands:
    starts, t, h = grid.row_starts, grid.tile_size, grid.height

    def clip(y: int) -> int:
        return min(max(y, 0), h)

    start, end = clip(starts[r]), clip(starts[r] + t)
    top_end = max(start, min(clip(starts[r - 1] + t), end)) if r > 0 else start
    return RowBands(start, top_end, max(top_end, min(grid.rows_done_after(r), end)), end)


@dataclass
class RowResult:
    """What tile row ``row`` contributes (see the module docstring)."""

    row: int
    bands: RowBands
    valid: np.ndarray | None  # bool (end - top_end, width): own and bottom rows; None: all valid
    top: list = field(default_factory=list)  # (col0, float32 (3, top rows, n)) per tile, column order
    own: np.ndarray | None = None  # uint8 (3, own rows, width)
    bottom: np.ndarray | None = None  # float32 (3, bottom rows, width)
    rendered: int = 0  # tiles sent to the model

    @property
    def nbytes(self) -> int:
        parts = (self.own, self.bottom, self.valid)
        return sum(p.nbytes for _, p in self.top) + sum(a.nbytes for a in parts if a is not None)


class RowBlend:
    """The blend of one tile row: :meth:`add` its tiles' outputs in column order, then
    :meth:`result`. ``valid``: the mask of the tile row's raster rows ``[start, end)``."""

    def __init__(self, grid: TileGrid, r: int, weights: BlendWeights, valid: np.ndarray) -> None:
        self.bands = b = row_bands(grid, r)
        self.window, self.width = weights.window, grid.width
        self.weights = weights
        own = valid[b.top_end - b.start :]
        self.out = RowResult(r, b, None if own.all() else own)
        self.sums = np.zeros((3, b.end - b.top_end, grid.width), np.float32)  # own + bottom rows

    def add(self, chip: Chip, out: np.ndarray) -> None:
        """Weight one tile's output (3, size, size): its top rows kept apart, the rest summed."""
        b, t = self.bands, chip.size
        c0, c1 = max(chip.col_off, 0), min(chip.col_off + t, self.width)
        self.out.rendered += 1
        if c1 <= c0:
            return
        tc, n_top, n_rest = c0 - chip.col_off, b.top_end - b.start, self.sums.shape[1]
        if n_top:
            tr = b.start - chip.row_off
            w = self.window[tr : tr + n_top, tc : tc + c1 - c0]
            self.out.top.append((c0, out[:, tr : tr + n_top, tc : tc + c1 - c0] * w))
        if n_rest:
            tr = b.top_end - chip.row_off
            w = self.window[tr : tr + n_rest, tc : tc + c1 - c0]
            self.sums[:, :, c0:c1] += out[:, tr : tr + n_rest, tc : tc + c1 - c0] * w

    def result(self) -> RowResult:
        n_own = self.bands.own_end - self.bands.top_end
        self.out.own = self.weights.finish(self.sums[:, :n_own], self.bands.top_end)
        self.out.bottom = self.sums[:, n_own:].copy()
        self.sums = None
        return self.out


class RowMerger:
    """Adds :class:`RowResult` values in tile-row order; yields ``(first_row, uint8 (3, n, width),
    valid bool (n, width))`` of the rows each one finishes, top to bottom."""

    def __init__(self, grid: TileGrid) -> None:
        self.grid = grid
        self.weights = BlendWeights.of(grid)
        self.next = 0  # tile row expected next
        self.first = 0  # raster row of sums[:, 0]
        self.sums = np.zeros((3, 0, grid.width), np.float32)  # running sums of unfinished rows
        self.valid = np.zeros((0, grid.width), bool)  # and their mask

    @property
    def done(self) -> bool:
        return self.next == self.grid.shape[0]

    def add(self, result: RowResult) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Merge ``result``, yielding the rows it finishes; its ``bottom`` is taken over (summed into)."""
        if result.row != self.next:
            raise ValueError(f"tile rows must come in order: got {result.row}, expected {self.next}")
        b = result.bands
        if b.start != self.first or b.top_end != self.first + self.sums.shape[1]:
            raise ValueError(f"tile row {result.row} covers rows {b} but the merger holds rows "
                             f"{self.first}–{self.first + self.sums.shape[1]}")
        for c0, prod in result.top:  # in column order, as a whole-raster blend adds them
            self.sums[:, :, c0 : c0 + prod.shape[2]] += prod
        valid = result.valid if result.valid is not None else np.ones((b.end - b.top_end, self.grid.width), bool)
        later = self.grid.rows_done_after(result.row)
        n = min(later, b.top_end) - self.first
        if n > 0:
            yield self.first, self.weights.finish(self.sums[:, :n], self.first), self.valid[:n]
        n_own = b.own_end - b.top_end
        if n_own:
            yield b.top_end, result.own, valid[:n_own]
        rest = self.sums[:, max(n, 0):]  # rows three tile rows cover (overlap over half a tile)
        if rest.shape[1]:
            self.sums = np.concatenate([rest, result.bottom], axis=1)
        else:  # the bottom's partial sum from zero is the running sum there: taken over, not copied
            self.sums = result.bottom if result.bottom.flags.writeable else result.bottom.copy()
        self.valid = np.concatenate([self.valid[max(n, 0):], valid[n_own:]])
        self.first = b.end - self.sums.shape[1]  # what is left is contiguous up to the row's end
        self.next += 1
