"""The Processing algorithms: "Render aerial imagery from map" and "Regenerate XYZ tiles".

They follow QGIS's own conventions (``native:`` algorithms, and the Deepness plugin's
model inference on layers): parameters in UPPER_CASE, advanced ones flagged, outputs
overwritten as Processing always does, progress and cancellation through the
``QgsProcessingFeedback`` (:mod:`.feedback`), library errors raised as
``QgsProcessingException`` with the library's message. Each run is one library call;
the model is kept between runs while its file is unchanged.
"""

from __future__ import annotations

import os
import threading

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..errors import GeoPix2PixError
from ..model.choices import DEVICE_CHOICES, PRECISIONS
from .feedback import run_with_feedback
from .layers import find_layer, layer_source, xyz_url_template

__all__ = ["RenderAlgorithm", "TilesAlgorithm"]

FORMATS = ("png", "jpeg", "webp")
#: Metatile side in the tiles algorithm: cancellation is checked between metatiles, and
#: 4 × 4 tiles take seconds on a CPU. The tiles do not depend on it (nor do cache keys).
QGIS_META_SIZE = 4

_model_lock = threading.Lock()
_model_cache: dict = {}


def cached_model(path: str | None, device: str, precision: str = "fp32"):
    """``resolve_model(path, device, precision)``, reusing the last model while its file is unchanged."""
    from ..model.load import default_model_path
    from ..model.spec import resolve_model

    file = path or str(default_model_path())
    try:
        st = os.stat(file)
        key = (os.path.abspath(file), st.st_mtime_ns, st.st_size, device, precision)
    except OSError:
        key = None  # resolve_model says what is wrong with the path
    with _model_lock:
        if key is not None and _model_cache.get("key") == key:
            return _model_cache["model"]
        model = resolve_model(path, device, precision)
        _model_cache.update(key=key, model=model)
        return model


def _advanced(param: QgsProcessingParameterDefinition) -> QgsProcessingParameterDefinition:
    param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return param


def _model_param(name: str) -> QgsProcessingParameterFile:
    return QgsProcessingParameterFile(name, "Model file (.pt; empty: the default model shipped with geo-pix2pix)",
                                      behavior=QgsProcessingParameterFile.File, extension="pt", optional=True)


def _device_param(name: str) -> QgsProcessingParameterEnum:
    return _advanced(QgsProcessingParameterEnum(name, "Device (auto: CUDA, then MPS, then CPU)",
                                                options=list(DEVICE_CHOICES), defaultValue=0))


def _precision_param(name: str) -> QgsProcessingParameterEnum:
    return _advanced(QgsProcessingParameterEnum(
        name, "Precision (bf16: about 2× faster on CPUs with AVX512-BF16 or AMX; int8: quantised CPU "
              "inference; both differ slightly from fp32)",
        options=list(PRECISIONS), defaultValue=0))


class _Algorithm(QgsProcessingAlgorithm):
    def group(self) -> str:
        return ""

    def groupId(self) -> str:
        return ""

    def createInstance(self):
        return type(self)()

    def _model(self, parameters, context, feedback):
        path = self.parameterAsFile(parameters, "MODEL", context) or None
        device = DEVICE_CHOICES[self.parameterAsEnum(parameters, "DEVICE", context)]
        precision = PRECISIONS[self.parameterAsEnum(parameters, "PRECISION", context)]
        feedback.pushInfo(f"model: {path or 'the default model'} on {device}, {precision}")
        try:
            return cached_model(path, device, precision)
        except GeoPix2PixError as exc:
            raise QgsProcessingException(str(exc)) from exc


class RenderAlgorithm(_Algorithm):
    """Render a map raster layer into a synthetic aerial image, georeference kept."""

    INPUT, MODEL, OVERLAP, BATCH_SIZE, DEVICE, OUTPUT = "INPUT", "MODEL", "OVERLAP", "BATCH_SIZE", "DEVICE", "OUTPUT"

    def name(self) -> str:
        return "render"

    def displayName(self) -> str:
        return "Render aerial imagery from map"

    def shortHelpString(self) -> str:
        return ("Turns a map raster (roads, buildings, parks, water drawn as a map) into a synthetic "
                "aerial image with a pix2pix model. The output has the input's CRS, extent, size and "
                "nodata. The input must be a file GDAL reads (GeoTIFF, PNG/JPEG, VRT…); the raster "
                "is cut into overlapping 256-px tiles, run in batches and blended without seams. "
                "Cancelling leaves no output file.")

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Map raster layer"))
        self.addParameter(_model_param(self.MODEL))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            self.OVERLAP, "Tile overlap (pixels)", QgsProcessingParameterNumber.Integer, 64, False, 0, 255)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            self.BATCH_SIZE, "Batch size (tiles per model call)", QgsProcessingParameterNumber.Integer, 8,
            False, 1, 1024)))
        self.addParameter(_device_param(self.DEVICE))
        self.addParameter(_precision_param("PRECISION"))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Synthetic aerial imagery"))

    def processAlgorithm(self, parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback):
        from ..render import render

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        try:
            src = layer_source(layer)
        except GeoPix2PixError as exc:
            raise QgsProcessingException(str(exc)) from exc
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        model = self._model(parameters, context, feedback)
        result = run_with_feedback(
            render, feedback,
            "Render canceled: no output was written (temporary files removed, an existing output left as it was)",
            src=src, dst=out, model=model, overlap=self.parameterAsInt(parameters, self.OVERLAP, context),
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context), overwrite=True)
        note = ", resampled to the model's ground resolution and back" if result.resampled else ""
        feedback.pushInfo(f"wrote {result.path} ({result.width}×{result.height} px, "
                          f"{result.tiles_rendered}/{result.tiles_total} tiles rendered{note})")
        return {self.OUTPUT: str(result.path)}


class TilesAlgorithm(_Algorithm):
    """Make or bring up to date an XYZ tile cache of synthetic aerial imagery from map tiles."""

    SOURCE, OUTPUT, ZOOM_MIN, ZOOM_MAX, EXTENT = "SOURCE", "OUTPUT", "ZOOM_MIN", "ZOOM_MAX", "EXTENT"
    MODEL, FORMAT, FORCE, DEVICE = "MODEL", "FORMAT", "FORCE", "DEVICE"

    def name(self) -> str:
        return "tiles"

    def displayName(self) -> str:
        return "Regenerate XYZ tiles"

    def shortHelpString(self) -> str:
        return ("Makes, or brings up to date, an XYZ tile cache of synthetic aerial imagery from map "
                "tiles. Map tiles: an XYZ folder ({z}/{x}/{y}.png), an .mbtiles file, a georeferenced "
                "raster file, a tile-server URL template, or the name of a raster or XYZ layer of the "
                "project. Output: a folder (XYZ), or a path ending in .mbtiles or .pmtiles. A rerun "
                "regenerates only tiles whose map tiles, model or options changed. Cancelling stops "
                "after the current block of tiles: the tiles written so far are complete and kept, "
                "and the next run goes on from there.")

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterString(
            self.SOURCE, "Map tiles (XYZ folder, .mbtiles, raster, URL template or layer name)"))
        self.addParameter(QgsProcessingParameterNumber(
            self.ZOOM_MIN, "Minimum zoom", QgsProcessingParameterNumber.Integer, 14, False, 0, 24))
        self.addParameter(QgsProcessingParameterNumber(
            self.ZOOM_MAX, "Maximum zoom", QgsProcessingParameterNumber.Integer, 16, False, 0, 24))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, "Extent (empty: the map tiles' extent)", optional=True))
        self.addParameter(_model_param(self.MODEL))
        self.addParameter(QgsProcessingParameterEnum(self.FORMAT, "Tile format", options=list(FORMATS),
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.FORCE, "Regenerate every tile, changed or not", defaultValue=False))
        self.addParameter(_device_param(self.DEVICE))
        self.addParameter(_precision_param("PRECISION"))
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.OUTPUT, "Tile cache (a folder, or a path ending in .mbtiles or .pmtiles)"))
        for name, text in (("RENDERED", "Tiles rendered"), ("UNCHANGED", "Tiles skipped as unchanged"),
                           ("EMPTY", "Tiles skipped as empty"), ("FAILED", "Tiles that failed")):
            self.addOutput(QgsProcessingOutputNumber(name, text))

    def _source(self, parameters, context: QgsProcessingContext) -> str:
        value = self.parameterAsString(parameters, self.SOURCE, context).strip()
        project = context.project()
        layer = find_layer(project, value) if project is not None and value else None
        if layer is None:
            return value
        url = xyz_url_template(layer)
        if url is not None:
            return url
        try:
            return layer_source(layer)
        except GeoPix2PixError as exc:
            raise QgsProcessingException(str(exc)) from exc

    def processAlgorithm(self, parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback):
        from ..tiles import Area, make_tiles

        source = self._source(parameters, context)
        dest = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        zmin = self.parameterAsInt(parameters, self.ZOOM_MIN, context)
        zmax = self.parameterAsInt(parameters, self.ZOOM_MAX, context)
        if zmin > zmax:
            raise QgsProcessingException(f"Minimum zoom {zmin} is above maximum zoom {zmax}: swap them")
        area = None
        if parameters.get(self.EXTENT) not in (None, ""):
            wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, wgs84)
            if not rect.isNull() and not rect.isEmpty():
                area = Area.from_bbox((rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()))
        model = self._model(parameters, context, feedback)
        fmt = FORMATS[self.parameterAsEnum(parameters, self.FORMAT, context)]
        feedback.pushInfo(f"map tiles: {source}; tile cache: {dest}; zooms {zmin}-{zmax}")
        result = run_with_feedback(
            make_tiles, feedback,
            "Tiles canceled: the tiles written so far are complete and kept; run again to go on",
            source=source, dest=dest, zooms=(zmin, zmax), area=area, model=model, fmt=fmt,
            force=self.parameterAsBool(parameters, self.FORCE, context),
            meta_size=QGIS_META_SIZE, workers=1, overwrite=False)
        for tile, reason in result.failures:
            feedback.reportError(f"tile {tile} failed: {reason}", False)
        feedback.pushInfo(f"{result.dest}: {result.summary()}")
        return {self.OUTPUT: str(result.dest), "RENDERED": result.rendered, "UNCHANGED": result.unchanged,
                "EMPTY": result.empty, "FAILED": result.failed}
