"""``geo-pix2pix osm-map``: OpenStreetMap data drawn as a map raster to render."""

from __future__ import annotations

import logging

import click

from .common import progress_bar
from .options import GROUND_RESOLUTION, overwrite_opt


@click.command("osm-map")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--bbox", default=None,
              help="Area as W,S,E,N in degrees [default: the extent of SRC's roads and buildings].")
@click.option("--resolution", type=GROUND_RESOLUTION, default=None,
              help="Ground metres per pixel [default: the default model's, 2.12].")
@overwrite_opt
@click.pass_context
def osm_map(ctx, src, dst, bbox, resolution, overwrite):
    """Draw OpenStreetMap data SRC (.osm.pbf) as a map raster DST (GeoTIFF, EPSG:3857) to render.

    Roads, buildings, parks, water and railways are drawn in the colours and road widths of
    the default model's training maps. Needs the osm extra: pip install "geo-pix2pix[osm]".
    """
    from ..osm import DEFAULT_RESOLUTION, parse_bbox
    from ..osm import osm_map as draw_osm_map

    logging.getLogger("pyrosm").setLevel(logging.WARNING)  # it logs every call at INFO
    if resolution is None:  # the default model's, read from its checkpoint
        from ..model.checkpoints import load_checkpoint
        from ..model.load import default_model_path

        model_path = default_model_path()
        resolution = load_checkpoint(model_path).ground_resolution if model_path.exists() else None
        resolution = resolution or DEFAULT_RESOLUTION
    bar, update = progress_bar(ctx, "osm-map", unit="block")
    with bar:
        result = draw_osm_map(src, dst, bbox=parse_bbox(bbox), resolution=resolution, overwrite=overwrite,
                              progress=update)
    if not ctx.meta.get("quiet"):
        click.echo(f"wrote {result.path} ({result.width}×{result.height} px at {result.resolution:g} m/px, "
                   f"{result.features} OSM features)", err=True)
