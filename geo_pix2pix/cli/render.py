"""``geo-pix2pix render``: a map raster into a synthetic aerial image."""

from __future__ import annotations

import time

import click

from .common import keeps_heap, log, log_model, model_spec, progress_bar, sets_threads
from .options import (
    batch_opt,
    device_opt,
    overlap_opt,
    overwrite_opt,
    precision_opt,
    scheduler_opt,
    threads_opt,
    weights_opt,
)


@click.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@weights_opt
@device_opt
@threads_opt
@precision_opt
@batch_opt
@overlap_opt
@overwrite_opt
@click.option("--bands", type=str, default=None, help="Bands to read as R,G,B (1-based), e.g. 3,2,1.")
@click.option("--model-grid", is_flag=True,
              help="Write the result on the model's resolution grid instead of the input's.")
@click.option("--cog", is_flag=True, help="Write a Cloud Optimized GeoTIFF.")
@click.option("--compress", default=None, metavar="zstd|deflate|lzw|jpeg|none",
              help="GeoTIFF compression [default: zstd, level 1; deflate for readers older than GDAL 2.3].")
@click.option("--overviews/--no-overviews", default=True, show_default=True,
              help="Build internal overviews (2×, 4×, … average) in a GeoTIFF DST; skipping them saves "
                   "about 6 % of a 4096² render, for output that is only an intermediate step.")
@scheduler_opt
@click.pass_context
@keeps_heap
@sets_threads
def render(ctx, src, dst, weights, device, precision, batch_size, overlap, overwrite, bands, model_grid, cog,
           compress, overviews, scheduler):
    """Render the map raster SRC into a synthetic aerial image DST.

    DST keeps SRC's CRS, transform, size and nodata. Use .tif for GeoTIFF output, or
    .png/.jpg for plain images.
    """
    from ..model.spec import resolve_model
    from ..render import render as render_fn

    spec = model_spec(weights, device, precision)
    model = spec if scheduler else resolve_model(spec)  # --scheduler: each worker loads it, on its --device
    log_model(weights, None if scheduler else model, precision,
               f"the --scheduler workers' {device}" if scheduler else None)
    bar, update = progress_bar(ctx, "render")
    start = time.monotonic()
    with bar:
        result = render_fn(src, dst, model=model, overlap=overlap, batch_size=batch_size, client=scheduler,
                           overwrite=overwrite, progress=update, bands=bands, model_grid=model_grid,
                           cog=cog, compress=compress, overviews=overviews)
    took = time.monotonic() - start
    log.info("rendered %d tile(s) in %.1f s (%.2f tiles/s)", result.tiles_rendered, took,
             result.tiles_rendered / max(took, 1e-9))
    note = " (resampled to the model's resolution)" if result.resampled else ""
    if not ctx.meta.get("quiet"):
        click.echo(f"wrote {result.path} ({result.width}×{result.height}, "
                   f"{result.tiles_rendered}/{result.tiles_total} tiles rendered{note})", err=True)
