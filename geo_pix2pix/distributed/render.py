"""``render`` on a Dask cluster: tile rows rendered on the workers, written here in order.

Each task renders one or a few consecutive tile rows (:func:`grid.core.render_tile_rows`,
at least :data:`TILES_PER_TASK` tiles, so that narrow rasters fill the model's batches):
the worker opens the input by its path (through the same ``WarpedVRT`` as the local run
when the input is resampled), reads the rows' strips, runs the model and returns each
row's contribution (:class:`grid.blend.RowResult`).
The client merges the contributions in row order (:class:`grid.blend.RowMerger`) and
feeds the finished rows to the same writer as a local run. A local run makes and merges
its tile rows with the same code, so the output is the same, bit for bit on the CPU. At
most :func:`cluster.task_window` rows are submitted and not yet merged: memory on the
client is a few tile rows, whatever the raster's height.

Workers get the model once per process from its :class:`~geo_pix2pix.model.spec.ModelSpec`: by its
checkpoint path (which every worker must be able to open, as the input raster), or, for
a module given in Python, pickled and scattered to every worker from the client.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

from ..grid.blend import RowResult
from ..grid.core import TilePipeline, render_tile_rows
from ..grid.tiling import TileGrid
from ..io.read import is_gdal_name
from ..model.load import InferenceModel
from ..model.spec import ModelSpec
from .cluster import connect, in_order, worker_model

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
        from ..errors import NotGeoreferencedWarning
        from ..io.model_grid import on_model_grid
        from ..io.read import open_map_raster

        with ExitStack() as stack:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the client warned already
                raster = stack.enter_context(open_map_raster(self.path, self.bands))
            if self.factor is not None:
                raster = stack.enter_context(on_model_grid(raster, self.factor))
            yield raster


def _render_rows_task(rows: range, raster: RasterSpec, spec: ModelSpec, grid: TileGrid,
                      batch_size: int) -> list[RowResult]:
    import rasterio

    from ..errors import CheckpointError, InputRasterError

    try:
        model = worker_model(spec)
        with rasterio.Env(GDAL_CACHEMAX=TASK_GDAL_CACHE_BYTES), raster.open() as reader:
            return render_tile_rows(reader, model, grid, rows, batch_size)
    except (InputRasterError, CheckpointError) as exc:
        # Most often a path the client sees and this worker does not.
        raise type(exc)(f"on the Dask worker on {socket.gethostname()}: {exc} (every worker must see the "
                        "input and the weights at the same path)") from None


class ClusterRowPipeline(TilePipeline):
    """Iterate ``(first_row, rgb, valid)`` as :class:`~geo_pix2pix.grid.core.TilePipeline` does,
    rendering the tile rows on the cluster."""

    def __init__(self, remote: RemoteRender, raster: RasterSpec, height: int, width: int, *,
                 tile_size: int, overlap: int, batch_size: int,
                 progress: Callable[[int, int], None] | None = None) -> None:
        super().__init__(None, remote.model, batch_size=batch_size, progress=progress,
                         grid=TileGrid(height, width, tile_size, overlap))
        self.remote, self.raster = remote, raster

    def results(self) -> Iterator[list[RowResult]]:
        args = (self.raster, self.remote.spec, self.grid, self.batch_size)
        return in_order(self.remote.client, _render_rows_task, self.grid.row_groups(TILES_PER_TASK), *args,
                        name="geo-pix2pix-render")


class RemoteRender:
    """The client side of a cluster render: the client, the model and how the workers get
    it (a :class:`ModelSpec`, or for a module given in Python the future of its scattered spec)."""

    def __init__(self, client, model: InferenceModel, spec) -> None:
        self.client, self.model, self.spec = client, model, spec

    @classmethod
    @contextmanager
    def open(cls, client, model, device: str | None):
        """``model``: anything :func:`~geo_pix2pix.model.spec.resolve_model` takes.

        Yields a RemoteRender whose ``model`` is a client-side copy for the facts render
        needs (ground resolution, tile multiple); the workers load their own on ``device``.
        """
        spec = ModelSpec.of(model, device)
        with connect(client) as c:
            if spec.module is None:
                yield cls(c, ModelSpec.of(spec, "cpu").load(), spec)
                return
            future = c.scatter(spec, broadcast=True, hash=False)
            try:
                yield cls(c, replace(spec, device=None).load(), future)
            finally:
                future.release()

    def pipeline(self, src: str | os.PathLike, bands, factor: float | None, height: int, width: int,
                 **kwargs) -> ClusterRowPipeline:
        path = os.fspath(src)
        spec = RasterSpec(path if is_gdal_name(path) else os.path.abspath(path), bands, factor)
        return ClusterRowPipeline(self, spec, height, width, **kwargs)
