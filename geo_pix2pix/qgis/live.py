"""A live aerial layer in QGIS: ``geo-pix2pix serve`` in the background of the QGIS session.

From QGIS's Python console::

    from geo_pix2pix.qgis import add_live_layer
    layer = add_live_layer("/data/map_tiles", cache="/data/aerial_cache")   # starts a server
    layer = add_live_layer(url="http://127.0.0.1:8000/")                    # a running one

The server runs in a thread of the QGIS process (:func:`geo_pix2pix.serve.start_background`)
on a free port of 127.0.0.1, and QGIS reads its tiles as any XYZ layer; panning renders
what is not cached yet. A second call for the same SOURCE and cache reuses its server.
Servers stop when QGIS quits (``aboutToQuit``, and at interpreter exit): running renders
finish, the cache's metadata is written and its lock released.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import urllib.request

from qgis.core import QgsApplication, QgsDataSourceUri, QgsProject, QgsRasterLayer

from ..errors import OptionError, TileSourceError

log = logging.getLogger(__name__)

__all__ = ["add_live_layer", "stop_live_servers"]

_servers: dict = {}  # (source, cache) → LiveServer, for this QGIS session


def add_live_layer(source=None, cache=None, *, url: str | None = None, name: str | None = None,
                   project: QgsProject | None = None, **kwargs) -> QgsRasterLayer:
    """Add the synthetic aerial XYZ layer of map ``source`` to ``project`` (default: the
    current one) and return it. A tile server for ``source`` is started in the background
    (keywords as :func:`geo_pix2pix.serve.start_background`: ``zooms``, ``model``,
    ``fmt``…; ``port`` 0, a free one, by default), or ``url`` names one already running."""
    if (source is None) == (url is None):
        raise OptionError("add_live_layer needs a map SOURCE to serve, or the url of a running geo-pix2pix "
                          "server: give one of them")
    if url is None:
        key = (os.path.abspath(source) if os.path.exists(source) else str(source),
               None if cache is None else os.path.abspath(cache))
        server = _servers.get(key)
        if server is None or not server.running:
            from ..serve import start_background

            kwargs.setdefault("port", 0)
            server = start_background(source, cache, **kwargs)
            _servers[key] = server
            _stop_with_qgis()
        url = server.url
    doc = _tilejson(url)
    uri = QgsDataSourceUri()
    uri.setParam("type", "xyz")
    uri.setParam("url", doc["tiles"][0])
    uri.setParam("zmin", str(doc["minzoom"]))
    uri.setParam("zmax", str(doc["maxzoom"]))
    layer = QgsRasterLayer(bytes(uri.encodedUri()).decode(), name or doc.get("name") or "synthetic aerial", "wms")
    if not layer.isValid():
        raise TileSourceError(f"QGIS could not open the XYZ layer of {url} ({layer.error().summary()})")
    layer.setAttribution(doc.get("attribution") or "")
    (project or QgsProject.instance()).addMapLayer(layer)
    return layer


def stop_live_servers() -> None:
    """Stop every server :func:`add_live_layer` started in this session."""
    while _servers:
        _, server = _servers.popitem()
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - quitting goes on; the cache is whole either way
            log.exception("stopping the tile server at %s failed", server.url)


def _tilejson(url: str) -> dict:
    base = url if url.endswith("/") else url + "/"
    try:
        with urllib.request.urlopen(base + "tilejson.json", timeout=30) as r:
            return json.load(r)
    except (OSError, ValueError) as exc:
        raise TileSourceError(f"no geo-pix2pix tile server answers at {base} ({exc}): start one with "
                              "`geo-pix2pix serve SOURCE`, or pass SOURCE instead of url") from None


_hooked = False


def _stop_with_qgis() -> None:
    global _hooked
    if _hooked:
        return
    app = QgsApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(stop_live_servers)
    atexit.register(stop_live_servers)
    _hooked = True
