"""rasterio beside QGIS in one Python process: keep each GDAL on its own data files.

A rasterio wheel carries its own GDAL and PROJ (renamed shared libraries, so they load
beside QGIS's without clashing: checked with Debian's QGIS 3.22 / GDAL 3.6 and
rasterio 1.4 / GDAL 3.10 in one process). What they share is the environment: QGIS
installers (OSGeo4W, the macOS bundle) set ``PROJ_DATA``/``PROJ_LIB`` and ``GDAL_DATA``
to QGIS's own files, rasterio then points its newer PROJ at QGIS's older ``proj.db``,
and every CRS operation fails with ``proj.db contains DATABASE.LAYOUT.VERSION.MINOR = 2
whereas a number >= 6 is expected``; OSGeo4W also sets ``GDAL_DRIVER_PATH`` to plugins
built for QGIS's GDAL, which rasterio's GDAL must not load. :func:`isolate_rasterio`
points rasterio's copies (only those: the settings go through rasterio's own GDAL and
PROJ) back at the data files inside its wheel and turns its plugin search off. It
imports no QGIS module, so it can be tested anywhere.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

__all__ = ["environment_report", "isolate_rasterio"]

_done = False


def isolate_rasterio() -> list[str]:
    """Point a wheel-installed rasterio at its own PROJ and GDAL data; return what changed.

    Does nothing for a rasterio built against the system's GDAL (no data inside the
    package: it shares QGIS's GDAL and files), and nothing the second time.
    """
    global _done
    if _done:
        return []
    _done = True
    from rasterio.env import GDALDataFinder, PROJDataFinder, set_gdal_config, set_proj_data_search_path

    changed = []
    proj = PROJDataFinder().search_wheel()
    outside = os.environ.get("PROJ_DATA") or os.environ.get("PROJ_LIB")
    if proj and outside and os.path.normpath(outside) != os.path.normpath(proj):
        set_proj_data_search_path(proj)
        changed.append(f"rasterio's PROJ reads {proj} (not PROJ_DATA/PROJ_LIB={outside})")
    gdal_data = GDALDataFinder().search_wheel()
    outside = os.environ.get("GDAL_DATA")
    if gdal_data and outside and os.path.normpath(outside) != os.path.normpath(gdal_data):
        set_gdal_config("GDAL_DATA", gdal_data)
        changed.append(f"rasterio's GDAL reads {gdal_data} (not GDAL_DATA={outside})")
    outside = os.environ.get("GDAL_DRIVER_PATH")
    if gdal_data and outside:
        # A wheel's GDAL has its drivers built in; the plugins there belong to QGIS's GDAL.
        # Effective only before rasterio's first dataset registers the drivers.
        set_gdal_config("GDAL_DRIVER_PATH", "disable")
        changed.append(f"rasterio's GDAL loads no plugins (not GDAL_DRIVER_PATH={outside})")
    for line in changed:
        log.info(line)
    return changed


def environment_report() -> dict[str, str]:
    """Versions of the two GDAL/PROJ stacks in this process, for bug reports."""
    import rasterio

    from .._version import __version__

    report = {
        "geo-pix2pix": __version__,
        "rasterio": rasterio.__version__,
        "rasterio GDAL": rasterio.__gdal_version__,
        "rasterio PROJ": getattr(rasterio, "__proj_version__", "?"),
    }
    try:
        from osgeo import gdal  # QGIS's own GDAL bindings, where installed

        report["QGIS GDAL (osgeo)"] = gdal.__version__
    except ImportError:
        pass
    try:
        from qgis.core import Qgis

        report["QGIS"] = Qgis.QGIS_VERSION
    except ImportError:
        pass
    for name in ("PROJ_DATA", "PROJ_LIB", "GDAL_DATA", "GDAL_DRIVER_PATH"):
        if name in os.environ:
            report[name] = os.environ[name]
    return report
