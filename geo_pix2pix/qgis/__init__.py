"""geo-pix2pix in QGIS: a Processing provider, a console helper and the plugin that loads them.

From QGIS's Python console::

    from geo_pix2pix.qgis import render_layer
    aerial = render_layer(iface.activeLayer())      # a new layer, added to the project

    import processing
    processing.run("geopix2pix:render", {"INPUT": layer, "OUTPUT": "/data/aerial.tif"})
    processing.run("geopix2pix:tiles", {"SOURCE": "/data/map_tiles", "ZOOM_MIN": 14,
                                        "ZOOM_MAX": 16, "OUTPUT": "/data/aerial.mbtiles"})

Only this subpackage imports ``qgis``, and only when one of its QGIS names is first
used: ``import geo_pix2pix.qgis`` works anywhere, and :mod:`.install` (which copies
the plugin into a QGIS profile, ``geo-pix2pix qgis install-plugin``) needs no QGIS.

- :mod:`.provider` — the Processing provider (``geopix2pix``);
- :mod:`.algorithms` — "Render aerial imagery from map" and "Regenerate XYZ tiles";
- :mod:`.console` — :func:`render_layer`; :mod:`.live` — :func:`add_live_layer` (a live tile server's layer);
- :mod:`.feedback` — progress, cancellation, logs and errors through ``QgsProcessingFeedback``;
- :mod:`.layers` — which layers can be read, output paths and layers;
- :mod:`.compat` — rasterio's GDAL and PROJ beside QGIS's in one process;
- :mod:`.install` and ``plugin/`` — the QGIS plugin and its installation.
"""

from __future__ import annotations

from importlib import import_module

__all__ = ["Canceled", "GeoPix2PixProvider", "RenderAlgorithm", "TilesAlgorithm", "add_live_layer", "install_plugin",
           "isolate_rasterio", "render_layer"]

_WHERE = {
    "Canceled": ".feedback",
    "GeoPix2PixProvider": ".provider",
    "RenderAlgorithm": ".algorithms",
    "TilesAlgorithm": ".algorithms",
    "add_live_layer": ".live",  # serve in the background, its aerial XYZ layer added
    "install_plugin": ".install",
    "isolate_rasterio": ".compat",
    "render_layer": ".console",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _WHERE[name] != ".install" and _WHERE[name] != ".compat":
        _require_qgis()
    return getattr(import_module(_WHERE[name], __name__), name)


def _require_qgis() -> None:
    try:
        import qgis.core  # noqa: F401
    except ImportError as exc:
        from ..errors import MissingDependencyError

        raise MissingDependencyError(
            f"geo_pix2pix.qgis needs QGIS's Python bindings, which this Python ({exc}) cannot import: "
            "run it inside QGIS (Python console, Processing, qgis_process), or with the Python QGIS "
            "uses, with geo-pix2pix installed there (see the README's QGIS section)") from exc
