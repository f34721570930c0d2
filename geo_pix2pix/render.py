"""Render a georeferenced map raster into a georeferenced synthetic aerial image.

The pipeline, each step in its own module:

1. :mod:`io.read` opens the input and checks it (bands, dtype, georeference);
2. if the model knows its ground resolution and the input's differs (or its pixels
   are not square on the ground), the input is read through a ``WarpedVRT`` on a grid
   at the model's resolution (same CRS; :mod:`model_grid`); what does not fit the
   output's format or disk is refused here, before any work;
3. :mod:`grid` lays overlapping tiles over that grid; strips of rows are read
   once, tiles cut from them, all-nodata tiles skipped, nodata in the others filled
   (:func:`grid.cut.fill_nodata`);
4. :mod:`model` runs batches of tiles (NaN refused, :func:`grid.core.run_tiles`);
   :mod:`grid.blend` blends the outputs and hands back finished rows and their mask, written at
   once (memory bounded by a strip), with the map's attribution and what made the
   image in the tags (:mod:`provenance`);
5. :mod:`io.write` warps the result back onto the input's grid (unless
   ``model_grid=True``), gives it overviews, optionally makes it a COG or a PNG/JPEG,
   and renames it onto ``dst``.

Everything is written to temporary files beside ``dst``; ``dst`` appears only when
all of it succeeded (:mod:`io.atomic`), with its own side files in place of any old
ones. One render at a time writes a given ``dst`` (:mod:`io.outlock`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .errors import OptionError
from .grid.core import TilePipeline
from .grid.tiling import DEFAULT_OVERLAP
from .io.geodesy import ground_pixel_size
from .io.model_grid import RESOLUTION_TOLERANCE, grid_factors, model_grid_shape, on_model_grid
from .io.outlock import OutputLock
from .io.read import open_map_raster
from .io.write import (
    COMPRESSIONS,
    RENDER_COMPRESSION,
    check_fits,
    check_output_path,
    gdal_config,
    output_kind,
    write_output,
)
from .model.load import InferenceModel, model_device
from .model.provenance import output_tags
from .model.spec import ModelLike, resolve_model

log = logging.getLogger(__name__)

__all__ = ["RenderResult", "render", "DEFAULT_BATCH_SIZE", "RESOLUTION_TOLERANCE"]

DEFAULT_BATCH_SIZE = 8
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RenderResult:
    """What :func:`render` did."""

    path: Path
    width: int
    height: int
    tiles_total: int  # tiles in the grid
    tiles_rendered: int  # tiles sent to the model (the rest were all nodata)
    resampled: bool  # the input was resampled to the model's ground resolution
    input_resolution: float | None  # metres per pixel, None if not georeferenced
    model_resolution: float | None


def _check_options(tile_size: int, overlap: int, batch_size: int, model: InferenceModel) -> None:
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size} must be at least 1")
    from .model.memory import check_memory, render_batch_bytes

    # The tiles of a batch and their outputs are held at once: refuse what cannot fit now.
    check_memory(render_batch_bytes(batch_size, tile_size), f"--batch-size {batch_size}",
                 "give a smaller --batch-size (the default is 8; 32 keeps a GPU busy)")
    multiple = model.tile_multiple
    if tile_size < 1 or tile_size % multiple:
        raise OptionError(f"--tile-size {tile_size} must be a positive multiple of {multiple} "
                          "(the generator halves the tile 8 times)")
    if not 0 <= overlap < tile_size:
        raise OptionError(f"--overlap {overlap} must be at least 0 and less than the tile size "
                          f"{tile_size}; the default is {DEFAULT_OVERLAP}")


def render(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    model: ModelLike = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    tile_size: int = 256,
    bands: str | tuple[int, ...] | None = None,
    model_grid: bool = False,
    cog: bool = False,
    compress: str | None = None,
    overviews: bool = True,
    client=None,
) -> RenderResult:
    """Render the map raster ``src`` into the synthetic aerial image ``dst``.

    ``model``: a checkpoint path (``None``: the default model), a
    :class:`~geo_pix2pix.model.spec.ModelSpec`, or a module mapping (N, 3, H, W) in [-1, 1]
    to the same shape, resolved on ``device`` by :func:`~geo_pix2pix.model.spec.resolve_model`
    (a :class:`~geo_pix2pix.Generator` runs on the engine; a module without a ground
    resolution is not resampled). ``progress(done, total)`` is called after every batch.

    ``client``: a ``distributed.Client``, a scheduler address (``tcp://HOST:PORT``) or
    ``local:N`` (N local workers): tile rows are rendered on that Dask cluster and
    written here, with the same output (:mod:`geo_pix2pix.distributed.render`). Workers
    load ``model`` from its path (None: the default model) or get a module scattered
    to them; the input's path must be readable on every worker.
    """
    overlap = DEFAULT_OVERLAP if overlap is None else int(overlap)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    compress = RENDER_COMPRESSION if compress is None else str(compress).lower()
    if compress not in COMPRESSIONS:
        raise OptionError(f"--compress {compress!r} is not one of {', '.join(COMPRESSIONS)}: "
                          f"choose one (default {RENDER_COMPRESSION})")
    if cog and not overviews:
        raise OptionError("--cog --no-overviews: a Cloud Optimized GeoTIFF is made with its overviews; "
                          "drop --no-overviews (overviews=False), or --cog for a plain GeoTIFF")
    dst = check_output_path(src, dst, overwrite)
    kind = output_kind(dst, cog)
    with ExitStack() as stack:
        # One writer per DST; the check again under the lock: a render that held it may
        # have just finished DST.
        stack.enter_context(OutputLock(dst))
        check_output_path(src, dst, overwrite)
        remote = None
        if client is not None:
            from .distributed.render import RemoteRender

            remote = stack.enter_context(RemoteRender.open(client, model, device))
            model = remote.model
        else:
            model = resolve_model(model, device)
        _check_options(tile_size, overlap, batch_size, model)

        stack.enter_context(gdal_config())
        raster = stack.enter_context(open_map_raster(src, bands))
        ds = raster.dataset
        pixel = ground_pixel_size(ds.crs, ds.transform, ds.width, ds.height) if raster.georeferenced else None
        in_res = None if pixel is None else (pixel[0] + pixel[1]) / 2
        model_res = model.ground_resolution
        factor = grid_factors(os.fspath(src), pixel, model_res)
        resampled = factor is not None
        grid_shape = model_grid_shape(ds.width, ds.height, factor) if resampled else (ds.width, ds.height)
        out_shape = grid_shape if model_grid else (ds.width, ds.height)
        check_fits(dst, kind, raster, out_shape, grid_shape, factor, in_res, model_res)
        grid_raster = raster
        if resampled:
            grid_raster = stack.enter_context(on_model_grid(raster, factor))
            log.info("resampling %s from %.3g to %.3g m/px for the model", src, in_res, model_res)
        tags = output_tags(ds.tags(), model)

        if remote is not None:
            pipe = remote.pipeline(src, bands, factor, grid_raster.height, grid_raster.width, tile_size=tile_size,
                                   overlap=overlap, batch_size=batch_size, progress=progress)
        else:
            pipe = TilePipeline(grid_raster, model, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                                progress=progress)
        write_output(dst, kind, raster, grid_raster, pipe, compress=compress, overviews=overviews,
                     warp_back=resampled and not model_grid, tags=tags,
                     background=remote is not None or model_device(model).type != "cpu")
        out_raster = grid_raster if resampled and model_grid else raster
        width, height = out_raster.width, out_raster.height
    return RenderResult(dst, width, height, len(pipe.grid), pipe.rendered, resampled, in_res, model_res)

