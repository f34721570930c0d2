"""``geo-pix2pix serve``: live XYZ tiles with a web viewer."""

from __future__ import annotations

import click

from .common import keeps_heap, model_spec, sets_threads
from .options import Number, count, device_opt, precision_opt, threads_opt, weights_opt


@click.command()
@click.argument("source")
@click.option("--cache", type=click.Path(), default=None,
              help="Where tiles are kept: a folder or an .mbtiles file, the same cache `tiles` makes and updates "
                   "[default: a temporary folder, removed at exit].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=Number(int, 0, 65535, hint="0 picks a free port"), default=8000, show_default=True)
@click.option("--zoom", "-z", default="12-18", show_default=True, help="Zooms served, e.g. 12-18.")
@click.option("--bbox", default=None, help="Area served as W,S,E,N in degrees [default: SOURCE's extent].")
@click.option("--format", "fmt", type=click.Choice(["png", "jpeg", "webp"]), default="png", show_default=True)
@click.option("--quality", type=count(1, 100, hint="the default is 85"), default=85, show_default=True,
              help="JPEG/WebP quality.")
@click.option("--buffer", type=Number(int, 0, hint="the default is 32"), default=32, show_default=True,
              help="Pixels of rendered context around every tile border (as in `tiles`).")
@click.option("--render-zoom", type=count(0, 24), default=None,
              help="Run the model at this zoom [default: the zoom matching its ground resolution].")
@click.option("--workers", "-j", type=count(), default=1, show_default=True,
              help="Model runs at once (the CPU's cores are shared by one run; a GPU is one device queue).")
@click.option("--queue", "queue_size", type=count(), default=32, show_default=True,
              help="Metatiles waiting for the model before requests get 503 + Retry-After.")
@click.option("--bands", type=str, default=None, help="Raster SOURCE: bands to read as R,G,B.")
@weights_opt
@device_opt
@threads_opt
@precision_opt
@click.pass_context
@keeps_heap
@sets_threads
def serve(ctx, source, cache, host, port, zoom, bbox, fmt, quality, buffer, render_zoom, workers, queue_size, bands,
          weights, device, precision):
    """Serve synthetic aerial XYZ tiles of map SOURCE live, with a web viewer, until Ctrl-C.

    SOURCE is anything `tiles` reads. Tiles are rendered on first request (the tiles of
    one metatile together) and kept in --cache; a tile served is byte-identical to the
    one `tiles SOURCE DEST` makes with the same options, and either command can fill the
    cache for the other. Endpoints: /{z}/{x}/{y}.png, /map/{z}/{x}/{y}.png (SOURCE),
    /tilejson.json, / (viewer), /healthz.
    """
    from ..serve.server import serve as run_server
    from ..tiles import Area

    model = model_spec(weights, device, precision)
    ctx.meta["interrupted_note"] = ("stopped serving; every tile and manifest row written is whole, and a "
                                    "restart serves the cache at once.")
    run_server(source, cache, host=host, port=port, zooms=zoom, model=model, workers=workers, queue_size=queue_size,
               area=Area.from_bbox(bbox) if bbox else None, fmt=fmt, quality=quality, buffer=buffer,
               render_zoom=render_zoom, bands=bands, device=None if device == "auto" else device)
