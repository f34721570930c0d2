"""``geo-pix2pix tiles``: make or update an XYZ tile cache."""

from __future__ import annotations

from pathlib import Path

import click

from .common import keeps_heap, model_spec, progress_bar, sets_threads
from .options import Number, count, device_opt, precision_opt, scheduler_opt, threads_opt, weights_opt


@click.command()
@click.argument("source")
@click.argument("dest", type=click.Path())
@click.option("--zoom", "-z", required=True, help="Zoom or zoom range to make, e.g. 14-17.")
@click.option("--bbox", default=None, help="Area as W,S,E,N in degrees [default: SOURCE's extent].")
@click.option("--aoi", type=click.Path(dir_okay=False), default=None,
              help="Area as GeoJSON polygons (lon/lat).")
@click.option("--format", "fmt", type=click.Choice(["png", "jpeg", "webp"]), default="png", show_default=True)
@click.option("--quality", type=count(1, 100, hint="the default is 85"), default=85, show_default=True,
              help="JPEG/WebP quality.")
@click.option("--meta-size", type=count(1, 64, hint="the default is 8 (8×8 tiles per model pass)"), default=8,
              show_default=True,
              help="Metatile side in tiles: tiles rendered per job (MapProxy meta_size).")
@click.option("--buffer", type=Number(int, 0, hint="the default is 32"), default=32, show_default=True,
              help="Pixels of rendered context around every tile border (model chips overlap by twice this).")
@click.option("--render-zoom", type=count(0, 24), default=None,
              help="Run the model at this zoom [default: the zoom matching its ground resolution].")
@click.option("--workers", "-j", type=count(), default=1, show_default=True, help="Worker processes.")
@click.option("--expire", type=click.Path(dir_okay=False), default=None,
              help="File of changed source tiles, z/x/y per line (osm2pgsql/render_expired).")
@click.option("--force", is_flag=True, help="Regenerate every tile, changed or not.")
@click.option("--no-model", is_flag=True, help="Copy the source's pixels: cut map tiles, no model.")
@click.option("--bands", type=str, default=None, help="Raster SOURCE: bands to read as R,G,B.")
@click.option("--name", default=None, help="Tile set name in the metadata [default: DEST's name].")
@click.option("--attribution", default=None,
              help="Attribution in the metadata [default: 'Synthetic aerial imagery…; map data: ' and the "
                   "source's own attribution].")
@click.option("--url-base", default=None, metavar="URL",
              help="XYZ DEST: the URL the folder is served at; tilejson.json then lists absolute tile URLs "
                   "[default: relative ones, resolved against the tilejson.json's own URL].")
@click.option("--max-tiles", type=Number(int, 0, hint="0 for no limit"), default=None,
              help="Refuse a run making more tiles than this, all zooms counted; 0: no limit "
                   "[default: 100,000,000].")
@weights_opt
@device_opt
@threads_opt
@precision_opt
@click.option("--overwrite", is_flag=True,
              help="Write into a DEST that geo-pix2pix did not make (a file DEST is replaced, once the new "
                   "one is complete).")
@scheduler_opt
@click.option("--webviewer", is_flag=True,
              help="XYZ DEST: also write index.html, a map page of the tiles that works offline (Leaflet inside).")
@click.pass_context
@keeps_heap
@sets_threads
def tiles(ctx, source, dest, zoom, bbox, aoi, fmt, quality, meta_size, buffer, render_zoom, workers, expire,
          force, no_model, bands, name, attribution, url_base, max_tiles, weights, device, precision, overwrite,
          scheduler, webviewer):
    """Make or update an XYZ tile cache DEST of synthetic aerial imagery from map tiles SOURCE.

    SOURCE: an XYZ folder ({z}/{x}/{y}.png), an .mbtiles file, a georeferenced raster in any
    CRS, or a URL template such as http://host/{z}/{x}/{y}.png. DEST: a folder (XYZ), an
    .mbtiles file or a .pmtiles archive. Reruns regenerate only tiles whose inputs changed.
    """
    from ..errors import OptionError
    from ..tiles import Area, CopyModel, make_tiles

    if bbox and aoi:
        raise OptionError("give --bbox or --aoi, not both")
    area = Area.from_bbox(bbox) if bbox else Area.from_geojson(aoi) if aoi else None
    if no_model and weights:
        raise OptionError("--no-model copies the source's pixels: drop --weights, or drop --no-model")
    if scheduler and workers > 1:
        raise OptionError(f"--workers {workers} runs a local pool, --scheduler a Dask cluster: give one of them")
    if webviewer and Path(dest).suffix.lower() in (".mbtiles", ".pmtiles"):
        raise OptionError(f"--webviewer writes index.html into an XYZ folder DEST, and {dest!r} is a file: drop "
                          "--webviewer, or use `geo-pix2pix serve` to view it")
    model = CopyModel() if no_model else model_spec(weights, device, precision)
    # What Ctrl-C, SIGTERM or SIGHUP leave: complete tiles, and a file --overwrite replaces as it was.
    ctx.meta["interrupted_note"] = ("the tiles made so far are kept and a rerun goes on from there; temporary "
                                    "files removed; a file that --overwrite was to replace is left as it was.")
    limits = {} if max_tiles is None else {"max_tiles": max_tiles}
    bar, update = progress_bar(ctx, "tiles")
    with bar:
        result = make_tiles(source, dest, zooms=zoom, area=area, model=model, fmt=fmt, quality=quality,
                            meta_size=meta_size, buffer=buffer, render_zoom=render_zoom, workers=workers,
                            expire=expire, force=force, overwrite=overwrite,
                            device=None if device == "auto" else device, bands=bands, name=name,
                            attribution=attribution, url_base=url_base, progress=update, client=scheduler,
                            **limits)
    for tile, reason in result.failures:
        click.echo(f"failed {tile}: {reason}", err=True)
    if not ctx.meta.get("quiet"):
        click.echo(f"{result.dest}: {result.summary()}", err=True)
    if webviewer:
        from ..serve.viewer import write_viewer

        url = source if str(source).startswith(("http://", "https://")) else None
        page = write_viewer(dest, map_url=url)
        if not ctx.meta.get("quiet"):
            click.echo(f"wrote {page}", err=True)
    if result.failed:
        ctx.exit(3)  # some tiles failed: the rest are written; a rerun retries them
