"""The tile loop: cut tile rows → run the model in batches → blend → finished rows.

Every path that applies a model to an image larger or smaller than a tile runs it:
``render`` (:class:`TilePipeline` on a raster file), its Dask tasks
(:func:`render_tile_rows` on the workers, :class:`.blend.RowMerger` on the client), XYZ
metatiles and evaluation (:func:`render_array` and :func:`render_rows` on images in
memory). Work is done per tile row (:class:`.blend.RowBlend`): tiles of consecutive
rows share batches, so batches stay full on any raster width; a row's result is handed
on as soon as its last tile has run, so memory holds about one tile row of float sums
whatever the raster's height.

``keep`` runs a subset of the chips (metatiles run only the chips touching stale tiles).
The blend divides by the weights of every chip of the grid, so a pixel's value is exact
when all the chips covering it were run; other pixels' values are partial and unused.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from torch import nn

from ..errors import ModelOutputError
from ..model.engine import COMPUTE_CHUNK
from ..model.load import model_device, run_batch
from .blend import BlendWeights, RowBlend, RowMerger, RowResult
from .cut import ArrayReader, ChipFilter, cut_strip
from .tiling import TileGrid

__all__ = ["TilePipeline", "render_array", "render_rows", "render_tile_rows", "run_tiles"]


def run_tiles(model: nn.Module, tiles: np.ndarray, device=None) -> np.ndarray:
    """:func:`model.run_batch`, refusing NaN (and infinite) outputs: the one place every path
    runs the model on a batch of tiles. NaN would be written as black pixels, and a finished,
    wrong image looks like a success."""
    out = run_batch(model, tiles, device)
    bad = np.isnan(out).any(axis=(1, 2, 3))
    if bad.any():
        raise ModelOutputError(
            f"the model returned NaN or infinite values for {int(bad.sum())} of {len(bad)} tiles of a batch: "
            "its weights are broken (a training run that diverged, a damaged file) or it is not a "
            "map-to-aerial model: use another checkpoint, or omit --weights for the default model")
    return out


def render_rows(model: nn.Module, rows: Iterable[tuple], batch_size: int) -> Iterator[RowResult]:
    """Results of tile rows ``(reader, grid, r, keep)`` in the order given, their tiles run in
    shared batches of ``batch_size`` (rounded to the model's compute chunk): a row is cut when
    the batches need its tiles and handed on once all its tiles have run."""
    device = model_device(model)
    step = max(COMPUTE_CHUNK, batch_size - batch_size % COMPUTE_CHUNK)
    pending: deque[list] = deque()  # [row blend, tiles still to run], in row order
    queue: list = []  # (pending entry, chip, tile) waiting for a batch
    grid_of = weights = None

    def run(n: int) -> None:
        batch, queue[:n] = queue[:n], []
        outs = run_tiles(model, np.stack([tile for _, _, tile in batch]), device)
        for (entry, chip, _), out in zip(batch, outs, strict=True):
            entry[0].add(chip, out)
            entry[1] -= 1

    def ready() -> Iterator[RowResult]:
        while pending and pending[0][1] == 0:
            yield pending.popleft()[0].result()

    for reader, grid, r, keep in rows:
        if grid is not grid_of:
            grid_of, weights = grid, BlendWeights.of(grid)
        strip = cut_strip(reader, grid, r, keep)
        entry = [RowBlend(grid, r, weights, strip.valid), len(strip.tiles)]
        pending.append(entry)
        queue.extend((entry, chip, tile) for chip, tile in strip.tiles)
        while len(queue) >= step:
            run(step)
        yield from ready()
    while queue:
        run(min(step, len(queue)))
    yield from ready()


def render_tile_rows(reader, model: nn.Module, grid: TileGrid, rows: range, batch_size: int = 32,
                     keep: ChipFilter = None) -> list[RowResult]:
    """The results of consecutive tile ``rows`` (a Dask task's work)."""
    return list(render_rows(model, ((reader, grid, r, keep) for r in rows), batch_size))


class TilePipeline:
    """Iterate ``(first_row, rgb uint8 (3, n, width), valid bool (n, width))`` of the
    rendered image, top to bottom.

    After iteration, :attr:`rendered` is the number of tiles sent to the model and
    ``len(self.grid)`` the number in the grid. ``grid`` replaces the default grid of
    ``tile_size`` and ``overlap`` (explicit starts); ``keep`` runs a chip subset.
    """

    def __init__(self, reader, model: nn.Module, *, tile_size: int = 256, overlap: int = 64,
                 batch_size: int = 8, progress: Callable[[int, int], None] | None = None,
                 grid: TileGrid | None = None, keep: ChipFilter = None) -> None:
        self.reader, self.model, self.batch_size, self.progress, self.keep = reader, model, batch_size, progress, keep
        self.grid = grid if grid is not None else TileGrid(reader.height, reader.width, tile_size, overlap)
        self.rendered = 0

    def __len__(self) -> int:
        return len(self.grid)

    def results(self) -> Iterator[list[RowResult]]:
        """The tile rows' results in order, in lists (a cluster's tasks hand back several)."""
        rows = ((self.reader, self.grid, r, self.keep) for r in range(self.grid.shape[0]))
        return ([result] for result in render_rows(self.model, rows, self.batch_size))

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        g = self.grid
        merger = RowMerger(g)
        for results in self.results():
            for result in results:
                self.rendered += result.rendered
                yield from merger.add(result)
            if self.progress is not None:
                self.progress((results[-1].row + 1) * g.shape[1], len(g))
        if not merger.done:
            raise RuntimeError(f"{merger.next} of the grid's {g.shape[0]} tile rows came back")


def render_array(rgb: np.ndarray, model: nn.Module, valid: np.ndarray | None = None, *,
                 tile_size: int = 256, overlap: int = 64, batch_size: int = COMPUTE_CHUNK,
                 grid: TileGrid | None = None, keep: ChipFilter = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Render an in-memory map image (3, H, W) uint8 as render would a file:
    (rgb uint8 (3, H, W), valid bool (H, W), tiles run)."""
    pipe = TilePipeline(ArrayReader(rgb, valid), model, tile_size=tile_size, overlap=overlap,
                        batch_size=batch_size, grid=grid, keep=keep)
    return _collect(pipe, pipe.grid) + (pipe.rendered,)


def _collect(rows: Iterable[tuple[int, np.ndarray, np.ndarray]], grid: TileGrid) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((3, grid.height, grid.width), np.uint8)
    mask = np.zeros((grid.height, grid.width), bool)
    for first, part, v in rows:
        out[:, first : first + part.shape[1]] = part
        mask[first : first + part.shape[1]] = v
    return out, mask
