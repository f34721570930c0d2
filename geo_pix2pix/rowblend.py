"""Rendering a raster one tile row per task, blended exactly as the sequential pipeline does.

:class:`~geo_pix2pix.pipeline.TilePipeline` blends tile outputs into a float32 sum in
row-major order: a pixel's sum is ``((0 + p₁) + p₂) + …`` over the tiles covering it,
``pᵢ = outᵢ · wᵢ`` (:class:`~geo_pix2pix.mosaic.StripMosaic`). Floating-point addition
is not associative, so a tile row rendered elsewhere (on a Dask worker) cannot hand back
just the sum of its products: added to the rows above, that sum would differ from the
sequential blend in the last bit, and sometimes in a uint8 value. What a tile row can
hand back exactly, split by raster row (:func:`row_bands`):

- *top* rows, also covered by an earlier tile row: each tile's product on its own, to be
  added to the running sum in column order, as the sequential blend adds them;
- *own* rows, covered by this tile row only: final, blended and rounded to uint8 (a
  third of the bytes of a float sum);
- *bottom* rows, first covered here and also by a later tile row: the partial sum from
  zero, which is exactly the running sum there (``0 + x == x``).

:func:`render_tile_row` computes that for tile row ``r`` (reading its strip and running
the model; tile outputs do not depend on their batch, see :func:`model.run_batch`), and
:class:`RowMerger` takes the results in row order and hands out finished rows,
bit-identical to TilePipeline's. The merger holds one tile row of float sums.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from torch import nn

from .engine import COMPUTE_CHUNK
from .model import model_device
from .mosaic import BlendWeights
from .pipeline import run_tiles, strip_tiles, to_uint8
from .tiling import TileGrid

__all__ = ["RowBands", "RowMerger", "RowResult", "render_tile_row", "render_tile_rows", "row_bands"]


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
    top: list = field(default_factory=list)  # (col0, float32 (3, top rows, n)) per tile, column order
    own: np.ndarray | None = None  # uint8 (3, own rows, width)
    bottom: np.ndarray | None = None  # float32 (3, bottom rows, width)
    rendered: int = 0  # tiles sent to the model

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for _, p in self.top) + sum(a.nbytes for a in (self.own, self.bottom) if a is not None)


def _blend(sums: np.ndarray, first: int, weights: BlendWeights) -> np.ndarray:
    """Finished rows from their weighted sums, as :meth:`StripMosaic.pop_rows` + ``to_uint8``."""
    return to_uint8(sums / weights.weight_sum(first, sums.shape[1]))


def render_tile_row(reader, model: nn.Module, grid: TileGrid, r: int, batch_size: int = 32) -> RowResult:
    """Read tile row ``r``'s strip from ``reader``, run its tiles and split the blend.

    ``reader`` is what :class:`~geo_pix2pix.pipeline.TilePipeline` reads (a
    :class:`~geo_pix2pix.raster.MapRaster`, an ``ArrayReader``). All-nodata tiles are
    skipped, as the pipeline skips them.
    """
    return render_tile_rows(reader, model, grid, range(r, r + 1), batch_size)[0]


def render_tile_rows(reader, model: nn.Module, grid: TileGrid, rows: range, batch_size: int = 32) -> list[RowResult]:
    """:func:`render_tile_row` for consecutive tile rows, their tiles run in shared batches
    (a narrow raster's rows would each fill a fraction of a :data:`COMPUTE_CHUNK`)."""
    width = grid.width
    weights = BlendWeights.of(grid)
    results, sums, queue = [], [], []
    for r in rows:
        kept = strip_tiles(reader, grid, r)  # read, nodata filled, as TilePipeline does
        bands = row_bands(grid, r)
        results.append(RowResult(r, bands, rendered=len(kept)))
        sums.append(np.zeros((3, bands.end - bands.top_end, width), np.float32))  # own + bottom rows
        queue.extend((len(results) - 1, c, tile) for c, tile in kept)
    device = model_device(model)
    step = max(COMPUTE_CHUNK, batch_size - batch_size % COMPUTE_CHUNK)
    for i in range(0, len(queue), step):
        group = queue[i : i + step]
        outs = run_tiles(model, np.stack([tile for _, _, tile in group]), device)
        for (k, chip, _), out in zip(group, outs, strict=True):
            _split(chip, out, results[k], sums[k], weights.window, width)
    for result, partial in zip(results, sums, strict=True):
        n_own = result.bands.own_end - result.bands.top_end
        result.own = _blend(partial[:, :n_own], result.bands.top_end, weights)
        result.bottom = partial[:, n_own:].copy()
    return results


def _split(chip, out: np.ndarray, result: RowResult, sums: np.ndarray, window: np.ndarray, width: int) -> None:
    """Weight one tile's output: its top rows kept apart, the rest summed (as StripMosaic.add)."""
    b, t = result.bands, chip.size
    c0, c1 = max(chip.col_off, 0), min(chip.col_off + t, width)
    if c1 <= c0:
        return
    tc, n_top, n_rest = c0 - chip.col_off, b.top_end - b.start, sums.shape[1]
    if n_top:
        tr = b.start - chip.row_off
        w = window[tr : tr + n_top, tc : tc + c1 - c0]
        result.top.append((c0, out[:, tr : tr + n_top, tc : tc + c1 - c0] * w))
    if n_rest:
        tr = b.top_end - chip.row_off
        w = window[tr : tr + n_rest, tc : tc + c1 - c0]
        sums[:, :, c0:c1] += out[:, tr : tr + n_rest, tc : tc + c1 - c0] * w


class RowMerger:
    """Adds :class:`RowResult` values in tile-row order; yields ``(first_row, uint8 rows)``."""

    def __init__(self, grid: TileGrid) -> None:
        self.grid = grid
        self.weights = BlendWeights.of(grid)
        self.next = 0  # tile row expected next
        self.first = 0  # raster row of sums[:, 0]
        self.sums = np.zeros((3, 0, grid.width), np.float32)  # running sums of unfinished rows

    @property
    def done(self) -> bool:
        return self.next == self.grid.shape[0]

    def add(self, result: RowResult) -> Iterator[tuple[int, np.ndarray]]:
        """Merge ``result``, yielding the rows it finishes; its ``bottom`` is taken over (summed into)."""
        if result.row != self.next:
            raise ValueError(f"tile rows must come in order: got {result.row}, expected {self.next}")
        b = result.bands
        if b.start != self.first or b.top_end != self.first + self.sums.shape[1]:
            raise ValueError(f"tile row {result.row} covers rows {b} but the merger holds rows "
                             f"{self.first}–{self.first + self.sums.shape[1]}")
        for c0, prod in result.top:  # in column order, as the sequential blend adds them
            self.sums[:, :, c0 : c0 + prod.shape[2]] += prod
        later = self.grid.rows_done_after(result.row)
        n = min(later, b.top_end) - self.first
        if n > 0:
            yield self.first, _blend(self.sums[:, :n], self.first, self.weights)
        if result.own is not None and result.own.shape[1]:
            yield b.top_end, result.own
        rest = self.sums[:, max(n, 0):]  # rows three tile rows cover (overlap over half a tile)
        if rest.shape[1]:
            self.sums = np.concatenate([rest, result.bottom], axis=1)
        else:  # the bottom's partial sum from zero is the running sum there: taken over, not copied
            self.sums = result.bottom if result.bottom.flags.writeable else result.bottom.copy()
        self.first = b.end - self.sums.shape[1]  # what is left is contiguous up to the row's end
        self.next += 1
