"""``geo-pix2pix serve``: a live XYZ tile server of synthetic aerial imagery, with a viewer.

Tiles are rendered on first request and served from a cache afterwards, like TiTiler or
MapProxy; the cache is the one ``geo-pix2pix tiles`` writes (same metatile code, same
manifest), so either can fill it for the other. Needs the ``serve`` extra (Starlette and
uvicorn)::

    from geo_pix2pix.serve import serve, start_background
    serve("sample_tiles/xyz", "aerial_cache/", port=8000)            # until Ctrl-C
    server = start_background("map.mbtiles", "aerial.mbtiles", port=0)
    print(server.url); server.stop()

- :mod:`.cache` — the cache opened for live rendering, in units (blocks, overview tiles);
- :mod:`.coalesce` — one job per unit, a bounded queue, work dropped for clients gone;
- :mod:`.app` — the HTTP endpoints; :mod:`.server` — uvicorn, foreground or background;
- :mod:`.viewer` — the web page (Leaflet, shipped inside the package), also ``tiles --webviewer``.
"""

from __future__ import annotations

from importlib import import_module

__all__ = ["LiveServer", "serve", "start_background", "write_viewer"]

_WHERE = {"LiveServer": ".server", "serve": ".server", "start_background": ".server", "write_viewer": ".viewer"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_WHERE[name], __name__), name)
