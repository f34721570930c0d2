"""``render`` on a Dask cluster: tile rows rendered on the workers, written here in order.

Each task renders one or a few consecutive tile rows (:func:`rowblend.render_tile_rows`,
at least :data:`TILES_PER_TASK` tiles, so that narrow rasters fill the model's batches):
the worker opens the input by its path (through the same ``WarpedVRT`` as the local run
when the input is resampled), reads the rows' strips, runs the model and returns each
row's contribution.
The client merges the contributions in row order (:class:`rowblend.RowMerger`) and
feeds the finished rows to the same writer as a local run, so the output is the same,
bit for bit on the CPU. At most :func:`cluster.task_window` rows are submitted and not
yet merged: memory on the client is a few tile rows, whatever the raster's height.

Workers get the model once per process (:class:`model_spec.ModelSpec`): by its
checkpoint path (which every worker must be able to open, as the input raster), or, for
a module given in Python, pickled and scattered to every worker from the client.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
from torch import nn

from .cluster import connect, in_order
from .model_spec import ModelSpec
from .raster import is_gdal_name
from .rowblend import RowMerger, RowResult, render_tile_rows
from .tiling import TileGrid

__all__ = ["ClusterRowPipeline", "RasterSpec", "RemoteRender"]

#: GDAL block cache of each task, bytes (the task reads a few strips; rasterio passes
#: an integer GDAL_CACHEMAX to GDAL as bytes).
TASK_GDAL_CACHE_BYTES = 16 << 20
#: Tiles per task, at least: whole tile rows are added until a task holds this many.
TILES_PER_TASK = 32


@dataclass(frozen=True)
class RasterSpec:
    """How a worker opens the input: path, bands and, when render resamples, the factor."""

    path: str
    bands: str | tuple[int, ...] | None
    factor: tuple[float, float] | None  # model grid / input grid pixel ratio (x, y); None: read as it is

    @contextmanager
    def open(self):
        from .errors import NotGeoreferencedWarning
        from .model_grid import on_model_grid
        from .raster import open_map_raster

        with ExitStack() as stack:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the client warned already
                raster = stack.enter_context(open_map_raster(self.path, self.bands))
            if self.factor is not None:
                raster = stack.enter_context(on_model_grid(raster, self.factor))
            yield raster


def _render_rows_task(rows: range, raster: RasterSpec, spec: ModelSpec, grid: tuple,
                      batch_size: int) -> list[RowResult]:
    import rasterio

    from .errors import CheckpointError, InputRasterError

    try:
        model = spec.load_cached()
        with rasterio.Env(GDAL_CACHEMAX=TASK_GDAL_CACHE_BYTES), raster.open() as reader:
            return render_tile_rows(reader, model, TileGrid(*grid), rows, batch_size)
    except (InputRasterError, CheckpointError) as exc:
        # Most often a path the client sees and this worker does not.
        raise type(exc)(f"on the Dask worker on {socket.gethostname()}: {exc} (every worker must see the "
                        "input and the weights at the same path)") from None


class ClusterRowPipeline:
    """Iterate ``(first_row, rows)`` as :class:`~geo_pix2pix.pipeline.TilePipeline` does,
    rendering the tile rows on the cluster."""

    def __init__(self, remote: RemoteRender, raster: RasterSpec, height: int, width: int, *,
                 tile_size: int, overlap: int, batch_size: int,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.remote, self.raster, self.batch_size, self.progress = remote, raster, batch_size, progress
        self.grid = TileGrid(height, width, tile_size, overlap)
        self.rendered = 0

    def __len__(self) -> int:
        return len(self.grid)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        g = self.grid
        merger = RowMerger(g)
        k = max(1, -(-TILES_PER_TASK // g.shape[1]))  # tile rows per task
        tasks = (range(r, min(r + k, g.shape[0])) for r in range(0, g.shape[0], k))
        args = (self.raster, self.remote.spec, (g.height, g.width, g.tile_size, g.overlap), self.batch_size)
        for results in in_order(self.remote.client, _render_rows_task, tasks, *args, name="geo-pix2pix-render"):
            for result in results:
                self.rendered += result.rendered
                yield from merger.add(result)
            if self.progress is not None:
                self.progress((results[-1].row + 1) * g.shape[1], len(g))
        if not merger.done:  # pragma: no cover - in_order yields every row
            raise RuntimeError("the cluster returned fewer tile rows than the grid has")


class RemoteRender:
    """The client side of a cluster render: the client, the model and how the workers get
    it (a :class:`ModelSpec`, or for a module given in Python the future of its scattered spec)."""

    def __init__(self, client, model: nn.Module, spec) -> None:
        self.client, self.model, self.spec = client, model, spec

    @classmethod
    @contextmanager
    def open(cls, client, model, device: str | None):
        """``model``: a checkpoint path, None (the default model) or a module.

        Yields a RemoteRender whose ``model`` is a client-side copy for the facts render
        needs (ground resolution, tile multiple); the workers load their own.
        """
        from .model import load_model

        with connect(client) as c:
            if model is None or isinstance(model, (str, os.PathLike)):
                local = load_model(model, "cpu")
                yield cls(c, local, ModelSpec.of_file(model, local, device))
                return
            module = model.eval()
            future = c.scatter(ModelSpec.of_module(module, device), broadcast=True, hash=False)
            try:
                yield cls(c, module, future)
            finally:
                future.release()

    def pipeline(self, src: str | os.PathLike, bands, factor: float | None, height: int, width: int,
                 **kwargs) -> ClusterRowPipeline:
        path = os.fspath(src)
        spec = RasterSpec(path if is_gdal_name(path) else os.path.abspath(path), bands, factor)
        return ClusterRowPipeline(self, spec, height, width, **kwargs)
