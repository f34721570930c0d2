"""The plugin object QGIS loads: the provider in ``initProcessing``, messages in ``initGui``.

``initProcessing`` is what ``qgis_process`` calls (with ``hasProcessingProvider=yes``
in metadata.txt); the desktop calls ``initGui``, which calls it too. When
``geo_pix2pix`` cannot be imported the plugin says why, in the message bar and the
log, and registers nothing: QGIS itself keeps working.
"""

import json
import os
import site
import sys

from qgis.core import Qgis, QgsApplication, QgsMessageLog

TAG = "geo-pix2pix"
HERE = os.path.dirname(os.path.abspath(__file__))


def _add_recorded_site_dirs():
    """Put the folders recorded by ``install-plugin`` first on ``sys.path``; return them."""
    path = os.path.join(HERE, "install.json")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return []
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if record.get("python") != here:
        raise ImportError(
            f"geo-pix2pix was installed for Python {record.get('python')} ({record.get('executable')}) but "
            f"QGIS runs Python {here}: install geo-pix2pix with QGIS's own Python, then run "
            "python -m geo_pix2pix qgis install-plugin with it again")
    before = list(sys.path)
    for d in record.get("site_dirs", []):
        if os.path.isdir(d) and d not in before:
            site.addsitedir(d)  # runs .pth files too (editable installs)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + [p for p in sys.path if p not in added]
    return added


def import_provider():
    """The provider class, importing geo_pix2pix from QGIS's path or the recorded folders."""
    try:
        from geo_pix2pix.qgis.provider import GeoPix2PixProvider
    except ModuleNotFoundError as exc:
        if exc.name != "geo_pix2pix":
            raise
        if not _add_recorded_site_dirs():
            raise ImportError(
                f"the geo_pix2pix package is not importable by QGIS's Python ({sys.prefix}): install it "
                "there (see the geo-pix2pix README, section QGIS)") from exc
        from geo_pix2pix.qgis.provider import GeoPix2PixProvider
    return GeoPix2PixProvider


class GeoPix2PixPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.error = None

    def initProcessing(self):  # noqa: N802 - the name QGIS calls
        if self.provider is not None:
            return
        try:
            provider_class = import_provider()
            self.provider = provider_class()
        except Exception as exc:  # noqa: BLE001 - any failure must leave QGIS working
            self.error = f"geo-pix2pix is not available: {type(exc).__name__}: {exc}"
            QgsMessageLog.logMessage(self.error, TAG, Qgis.Critical)
            print(self.error, file=sys.stderr)
            return
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 - the name QGIS calls
        self.initProcessing()
        if self.error and self.iface is not None:
            self.iface.messageBar().pushCritical(TAG, self.error)

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
