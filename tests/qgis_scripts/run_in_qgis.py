"""Run geo-pix2pix inside a headless QGIS; write what was seen to a JSON file.

Run by tests/test_qgis.py with the Python QGIS uses (Debian's /usr/bin/python3, through
.venv-qgis), never by pytest itself::

    QT_QPA_PLATFORM=offscreen python run_in_qgis.py SAMPLE_MAP SAMPLE_XYZ WORK_DIR RESULT.json

Each check stores plain values under its name; an exception is stored as its traceback
under ``"<check>.error"`` and the other checks still run. The test asserts on the file.
"""

from __future__ import annotations

import json
import shutil
import sys
import traceback
from pathlib import Path

SAMPLE, XYZ, WORK, RESULT = (Path(p) for p in sys.argv[1:5])
results: dict = {}


def check(name):
    def wrap(fn):
        try:
            results[name] = fn()
        except BaseException:  # noqa: BLE001 - recorded for the test to show
            results[name + ".error"] = traceback.format_exc()
        return fn

    return wrap


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# rasterio first, before QGIS: with PROJ_DATA pointing at QGIS's older proj.db (as the
# OSGeo4W and macOS QGIS set it) rasterio's own PROJ fails until geo_pix2pix isolates it.
import rasterio  # noqa: E402
import rasterio.warp  # noqa: E402
from rasterio.crs import CRS  # noqa: E402


@check("proj_before_isolation")
def _():
    try:
        CRS.from_epsg(3067).to_wkt()
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


from qgis.core import (  # noqa: E402
    Qgis,
    QgsApplication,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
)

app = QgsApplication([], False)
app.initQgis()
sys.path.append("/usr/share/qgis/python/plugins")  # Processing, as QGIS's own Python finds it
import processing  # noqa: E402
from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()

from geo_pix2pix.qgis import GeoPix2PixProvider, render_layer  # noqa: E402
from geo_pix2pix.qgis.compat import environment_report  # noqa: E402

provider = GeoPix2PixProvider()
QgsApplication.processingRegistry().addProvider(provider)
project = QgsProject.instance()
WORK.mkdir(parents=True, exist_ok=True)
# A copy: QGIS writes statistics (.aux.xml) beside the rasters it opens.
map_path = WORK / "helsinki_map.tif"
shutil.copy(SAMPLE, map_path)


@check("environment")
def _():
    report = environment_report()
    report["python"] = sys.version.split()[0]
    report["python executable"] = sys.executable
    report["qgis_version_int"] = Qgis.QGIS_VERSION_INT
    return report


@check("proj_after_isolation")
def _():
    return CRS.from_epsg(3067).to_wkt()[:30]


@check("both_gdals")
def _():
    from osgeo import gdal

    ds = gdal.Open(str(map_path))
    with rasterio.open(map_path) as rio:
        return {"osgeo_size": [ds.RasterXSize, ds.RasterYSize], "rasterio_size": [rio.width, rio.height],
                "osgeo_gdal": gdal.__version__, "rasterio_gdal": rasterio.__gdal_version__,
                "rasterio_4326_bounds": list(rasterio.warp.transform_bounds(rio.crs, "EPSG:4326", *rio.bounds))}


@check("algorithms")
def _():
    return sorted(a.id() for a in QgsApplication.processingRegistry().algorithms()
                  if a.provider() and a.provider().id() == "geopix2pix")


@check("algorithm_names")
def _():
    reg = QgsApplication.processingRegistry()
    return {i: reg.algorithmById(i).displayName() for i in ("geopix2pix:render", "geopix2pix:tiles")}


layer = QgsRasterLayer(str(map_path), "helsinki map", "gdal")
project.addMapLayer(layer)


def layer_facts(lyr: QgsRasterLayer) -> dict:
    e = lyr.extent()
    return {"valid": lyr.isValid(), "crs": lyr.crs().authid(), "width": lyr.width(), "height": lyr.height(),
            "extent": [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()], "bands": lyr.bandCount(),
            "in_project": bool(project.mapLayer(lyr.id())) if lyr.id() else False, "source": lyr.source()}


@check("input")
def _():
    return layer_facts(layer)


class Progress(QgsProcessingFeedback):
    """Records progress; cancels itself at the first report when asked."""

    def __init__(self, cancel_at: float | None = None) -> None:
        super().__init__()
        self.values: list[float] = []
        self.infos: list[str] = []
        self.cancel_at = cancel_at
        self.progressChanged.connect(self._on_progress)

    def _on_progress(self, value: float) -> None:
        self.values.append(value)
        if self.cancel_at is not None and value >= self.cancel_at:
            self.cancel()

    def pushInfo(self, info: str) -> None:  # noqa: N802
        self.infos.append(info)
        super().pushInfo(info)


@check("processing_run")
def _():
    out = WORK / "run" / "aerial.tif"
    out.parent.mkdir()
    fb = Progress()
    res = processing.run("geopix2pix:render", {"INPUT": layer, "OUTPUT": str(out)}, feedback=fb)
    aerial = QgsRasterLayer(res["OUTPUT"], "aerial", "gdal")
    project.addMapLayer(aerial)
    facts = layer_facts(aerial)
    facts.update(output=res["OUTPUT"], progress=[round(v, 1) for v in fb.values], infos=fb.infos,
                 files=files_in(out.parent))
    with rasterio.open(res["OUTPUT"]) as ds:
        data = ds.read()
        facts["mean"] = float(data.mean())
        facts["std"] = float(data.std())
    return facts


# A 256 × 256 corner of the map for the checks that need a render but not the whole map.
small_path = WORK / "small" / "map_small.tif"
small_path.parent.mkdir()
with rasterio.open(map_path) as src:
    win = rasterio.windows.Window(0, 0, 256, 256)
    profile = src.profile | {"width": 256, "height": 256, "transform": src.window_transform(win)}
    with rasterio.open(small_path, "w", **profile) as dst:
        dst.write(src.read(window=win))
small = QgsRasterLayer(str(small_path), "small map", "gdal")
project.addMapLayer(small)


def _render_at_precision(name, index):
    """Render the small map at fp32 and at the PRECISION choice ``index`` (the indices
    saved models and scripts hold: fp32 0, int8 1, bf16 2)."""
    folder = WORK / name
    folder.mkdir()
    fp32, other = folder / "fp32.tif", folder / f"{name}.tif"
    processing.run("geopix2pix:render", {"INPUT": small, "OUTPUT": str(fp32)})
    fb = Progress()
    processing.run("geopix2pix:render", {"INPUT": small, "PRECISION": index, "OUTPUT": str(other)}, feedback=fb)
    with rasterio.open(fp32) as a, rasterio.open(other) as b:
        diff = abs(a.read().astype(int) - b.read().astype(int))
        same_grid = a.crs == b.crs and a.transform == b.transform and a.shape == b.shape
    return {"same_grid": same_grid, "mean_diff": float(diff.mean()), "max_diff": int(diff.max()),
            "infos": fb.infos}


@check("processing_run_int8")
def _():
    return _render_at_precision("int8", 1)


@check("processing_run_bf16")
def _():
    return _render_at_precision("bf16", 2)


@check("run_and_load_results")
def _():
    out = WORK / "loaded.tif"
    res = processing.runAndLoadResults("geopix2pix:render", {"INPUT": small.id(), "OUTPUT": str(out)})
    loaded = [lyr for lyr in project.mapLayers().values() if Path(lyr.source()) == out]
    return {"output": res["OUTPUT"], "layers_in_project": len(loaded),
            "facts": layer_facts(loaded[0]) if loaded else None}


@check("render_layer")
def _():
    fb = Progress()
    new = render_layer(small, feedback=fb, batch_size=4)
    facts = layer_facts(new)
    facts.update(name=new.name(), progress_reports=len(fb.values), small=layer_facts(small))
    return facts


@check("render_layer_by_name_again")
def _():
    new = render_layer("small map", name="second")  # never replaces the first output
    return {"source": new.source(), "name": new.name(), "files": files_in(small_path.parent)}


@check("render_layer_existing_output")
def _():
    from geo_pix2pix.errors import OutputExistsError

    out = small_path.parent / "map_small_aerial.tif"  # made by render_layer above
    before = out.read_bytes()
    try:
        render_layer(small, out)
        raised = None
    except OutputExistsError as exc:
        raised = str(exc)
    return {"raised": raised, "untouched": out.read_bytes() == before}


@check("cancel")
def _():
    out_dir = WORK / "cancel"
    out_dir.mkdir()
    fb = Progress(cancel_at=0.0)
    try:
        processing.run("geopix2pix:render", {"INPUT": layer, "OUTPUT": str(out_dir / "aerial.tif")}, feedback=fb)
        raised = None
    except QgsProcessingException as exc:
        raised = str(exc)
    return {"raised": raised, "files": files_in(out_dir), "progress": fb.values, "canceled": fb.isCanceled()}


@check("cancel_render_layer")
def _():
    from geo_pix2pix.qgis import Canceled

    before = files_in(WORK)
    n_layers = len(project.mapLayers())
    try:
        render_layer(layer, WORK / "cancel" / "console.tif", feedback=Progress(cancel_at=0.0))
        raised = None
    except Canceled as exc:
        raised = str(exc)
    return {"raised": raised, "files": files_in(WORK / "cancel"), "work_dir_unchanged": files_in(WORK) == before,
            "layers_unchanged": len(project.mapLayers()) == n_layers}


@check("error_library_message")
def _():
    bad = WORK / "not_a_model.pt"
    bad.write_bytes(b"this is not a checkpoint")
    try:
        processing.run("geopix2pix:render", {"INPUT": small, "MODEL": str(bad), "OUTPUT": str(WORK / "e.tif")})
        return {"raised": None}
    except QgsProcessingException as exc:
        return {"raised": str(exc), "output_exists": (WORK / "e.tif").exists()}


@check("error_other_provider")
def _():
    xyz = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmin=0&zmax=19",
                         "xyz", "wms")
    try:
        render_layer(xyz)
        return {"raised": None, "valid": xyz.isValid()}
    except Exception as exc:  # noqa: BLE001
        return {"raised": f"{type(exc).__name__}: {exc}", "valid": xyz.isValid()}


@check("tiles")
def _():
    dest = WORK / "aerial.mbtiles"
    params = {"SOURCE": str(XYZ), "ZOOM_MIN": 15, "ZOOM_MAX": 15, "OUTPUT": str(dest)}
    fb = Progress()
    first = processing.run("geopix2pix:tiles", params, feedback=fb)
    again = processing.run("geopix2pix:tiles", params)
    return {"first": first, "again": again, "progress": fb.values[-1:] if fb.values else [],
            "exists": dest.is_file(), "layer_valid": QgsRasterLayer(str(dest), "t", "gdal").isValid()}


@check("tiles_cancel")
def _():
    dest = WORK / "canceled_tiles"
    params = {"SOURCE": str(XYZ), "ZOOM_MIN": 15, "ZOOM_MAX": 16, "OUTPUT": str(dest)}
    fb = Progress(cancel_at=0.0)
    try:
        processing.run("geopix2pix:tiles", params, feedback=fb)
        raised = None
    except QgsProcessingException as exc:
        raised = str(exc)
    kept = sorted(str(p.relative_to(dest)) for p in dest.glob("1[56]/*/*.png"))
    resumed = processing.run("geopix2pix:tiles", params)
    return {"raised": raised, "kept": len(kept), "progress": fb.values, "resumed": resumed,
            "temporary_files": [p.name for p in dest.rglob("*.tmp*")]}


@check("tiles_from_layer_name")
def _():
    # the XYZ folder opened as a QGIS XYZ layer, named as the source
    url = "type=xyz&url=" + XYZ.resolve().as_uri() + "/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmin=14&zmax=16"
    xyz = QgsRasterLayer(url, "map tiles", "wms")
    project.addMapLayer(xyz)
    dest = WORK / "from_layer"
    res = processing.run("geopix2pix:tiles", {"SOURCE": "map tiles", "ZOOM_MIN": 14, "ZOOM_MAX": 14,
                                              "OUTPUT": str(dest)})
    return {"result": res, "z14": sorted(str(p.relative_to(dest)) for p in dest.glob("14/*/*.png"))}


app.exitQgis()
RESULT.write_text(json.dumps(results, indent=1, default=str))
