"""The geo-pix2pix Processing provider: the algorithms under one name in the toolbox.

Registered by the plugin's ``initProcessing`` (so ``qgis_process`` sees it too), or by
hand from the Python console::

    from qgis.core import QgsApplication
    from geo_pix2pix.qgis import GeoPix2PixProvider
    QgsApplication.processingRegistry().addProvider(GeoPix2PixProvider())

Algorithm ids: ``geopix2pix:render`` and ``geopix2pix:tiles``.
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .._version import __version__
from .algorithms import RenderAlgorithm, TilesAlgorithm
from .compat import isolate_rasterio

__all__ = ["PROVIDER_ID", "GeoPix2PixProvider"]

PROVIDER_ID = "geopix2pix"
ICON = Path(__file__).parent / "plugin" / "icon.png"
#: Formats render writes (by the output's suffix); the first is the default.
RASTER_EXTENSIONS = ["tif", "tiff", "png", "jpg", "jpeg", "webp"]


class GeoPix2PixProvider(QgsProcessingProvider):
    def __init__(self) -> None:
        super().__init__()
        isolate_rasterio()

    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return "geo-pix2pix"

    def longName(self) -> str:
        return f"geo-pix2pix {__version__}: synthetic aerial imagery from maps (pix2pix)"

    def icon(self) -> QIcon:
        return QIcon(str(ICON)) if ICON.exists() else super().icon()

    def versionInfo(self) -> str:
        return __version__

    def supportedOutputRasterLayerExtensions(self) -> list[str]:
        return list(RASTER_EXTENSIONS)

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(RenderAlgorithm())
        self.addAlgorithm(TilesAlgorithm())
