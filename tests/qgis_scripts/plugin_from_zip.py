"""Install the plugin zip into a fresh QGIS profile, install its dependencies, render; JSON out.

Run by tests/test_qgis_plugin.py with QGIS's own Python (Debian's /usr/bin/python3, no
virtual environment: geo-pix2pix must not be importable before the plugin installs it)::

    QT_QPA_PLATFORM=offscreen QGIS_CUSTOM_CONFIG_PATH=CONFIG /usr/bin/python3 plugin_from_zip.py \
        PLUGIN.zip SAMPLE_MAP WORK_DIR RESULT.json

The GEO_PIX2PIX_SOURCE / _TORCH / _TORCH_INDEX variables say where packages come from.
Each check stores plain values under its name, an exception its traceback under
``"<check>.error"``; later checks still run. The test asserts on the file.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
import zipfile
from pathlib import Path

ZIP, SAMPLE, WORK, RESULT = (Path(p) for p in sys.argv[1:5])
results: dict = {}


def check(name):
    def wrap(fn):
        try:
            results[name] = fn()
        except BaseException:  # noqa: BLE001 - recorded for the test to show
            results[name + ".error"] = traceback.format_exc()
        RESULT.write_text(json.dumps(results, indent=1, default=str))  # what was seen, even if QGIS dies later
        return fn

    return wrap


@check("clean_state")
def _():
    seen = {}
    for name in ("geo_pix2pix", "torch", "rasterio"):
        try:
            __import__(name)
            seen[name] = True
        except ImportError:
            seen[name] = False
    return {"importable": seen, "python": sys.executable, "prefix": sys.prefix}


from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsTask  # noqa: E402

app = QgsApplication([], False)
app.initQgis()
sys.path.append("/usr/share/qgis/python/plugins")  # Processing, as QGIS's own Python finds it
import processing  # noqa: E402
import qgis.utils  # noqa: E402
from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()
profile = Path(QgsApplication.qgisSettingsDirPath())
plugins_dir = profile / "python" / "plugins"
WORK.mkdir(parents=True, exist_ok=True)
map_path = WORK / "helsinki_map.tif"
shutil.copy(SAMPLE, map_path)
project = QgsProject.instance()
clock = {"zip_installed_at": time.monotonic()}


@check("install_zip")
def _():
    # What Plugins ▸ Install from ZIP does: unzip into the profile's plugin folder, load, start.
    plugins_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(ZIP) as zf:
        zf.extractall(plugins_dir)
    sys.path.insert(0, str(plugins_dir))
    qgis.utils.plugin_paths.insert(0, str(plugins_dir))
    loaded = qgis.utils.loadPlugin("geo_pix2pix_plugin")
    started = qgis.utils.startPlugin("geo_pix2pix_plugin")
    plugin = qgis.utils.plugins.get("geo_pix2pix_plugin")
    reg = QgsApplication.processingRegistry()
    return {"profile": str(profile), "loaded": loaded, "started": started, "error": getattr(plugin, "error", None),
            "provider_registered": reg.providerById("geopix2pix") is not None,
            "files": sorted(p.name for p in (plugins_dir / "geo_pix2pix_plugin").iterdir())}


plugin = qgis.utils.plugins.get("geo_pix2pix_plugin")
from geo_pix2pix_plugin import deps  # noqa: E402


def files_of(root: Path) -> int:
    return sum(1 for _ in root.rglob("*"))


@check("install")
def _():
    before = deps.status()
    seen = []
    t0 = time.monotonic()
    result = deps.install(cpu=True, progress=lambda pct, msg: seen.append([round(pct, 1), msg]))
    after = deps.status()
    site = result.site_packages
    return {"before": before.state, "action": result.action, "torch": result.torch, "numpy": result.numpy,
            "root": str(result.root), "log": str(result.log_path), "seconds": time.monotonic() - t0,
            "progress": seen, "after": after.state, "record": after.record,
            "own_numpy": (site / "numpy").exists(), "site_packages": str(site)}


@check("activate_without_restart")
def _():
    plugin.install_finished(None, None)  # what the task's finish does on the main thread
    import geo_pix2pix
    from geo_pix2pix.qgis import render_layer  # the console helper

    reg = QgsApplication.processingRegistry()
    return {"provider_registered": reg.providerById("geopix2pix") is not None, "error": plugin.error,
            "geo_pix2pix_file": geo_pix2pix.__file__, "version": geo_pix2pix.__version__,
            "render_layer": callable(render_layer),
            "algorithms": sorted(a.id() for a in reg.algorithms() if a.provider().id() == "geopix2pix")}


@check("render")
def _():
    layer = QgsRasterLayer(str(map_path), "helsinki map", "gdal")
    project.addMapLayer(layer)
    out = WORK / "aerial.tif"
    res = processing.run("geopix2pix:render", {"INPUT": layer, "OUTPUT": str(out)})
    aerial = QgsRasterLayer(res["OUTPUT"], "aerial", "gdal")
    project.addMapLayer(aerial)
    clock["first_layer_at"] = time.monotonic()

    def facts(lyr):
        e = lyr.extent()
        return {"valid": lyr.isValid(), "crs": lyr.crs().authid(), "width": lyr.width(), "height": lyr.height(),
                "bands": lyr.bandCount(), "extent": [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()]}

    return {"input": facts(layer), "output": facts(aerial),
            "zip_to_first_layer_s": clock["first_layer_at"] - clock["zip_installed_at"]}


@check("second_run")
def _():
    log = deps.environment_root() / "install.log"
    size = log.stat().st_size
    t0 = time.monotonic()
    result = deps.install(cpu=True)
    return {"action": result.action, "seconds": time.monotonic() - t0, "log_unchanged": log.stat().st_size == size}


def wait_for(task: QgsTask, limit: float = 1500) -> None:
    """Run QGIS's event loop until the plugin's task has ended (as the desktop would)."""
    t0 = time.monotonic()
    while plugin.task is not None and time.monotonic() - t0 < limit:  # the plugin clears it when done
        app.processEvents()
        time.sleep(0.05)


@check("broken_then_repair")
def _():
    site = Path(results["install"]["site_packages"])
    victim = site / "affine" / "__init__.py"
    victim.unlink()
    broken = deps.status()
    task = plugin.start_install(cpu=True, repair=True)  # the dialog's Repair
    running = task.status() in (QgsTask.Queued, QgsTask.OnHold, QgsTask.Running)
    wait_for(task)
    after = deps.status()
    return {"broken": broken.state, "damaged": list(broken.damaged), "detail": broken.detail,
            "task_was_running": running, "task_done": plugin.task is None,
            "task_error": str(task.error) if task.error else None,
            "action": getattr(task.result, "action", None), "progress": [p for p, _ in task.messages],
            "after": after.state,
            "restored": victim.exists(), "provider_registered":
                QgsApplication.processingRegistry().providerById("geopix2pix") is not None}


@check("interrupted_then_repair")
def _():
    canceled = []

    def progress(pct, msg):
        if msg.startswith("installing torch"):
            canceled.append(msg)  # pip is started, then stopped at once

    try:
        deps.repair(cpu=True, progress=progress, is_canceled=lambda: bool(canceled))
        raised = None
    except deps.InstallCanceled as exc:
        raised = str(exc)
    interrupted = deps.status()
    result = deps.repair(cpu=True)
    return {"raised": raised, "interrupted": interrupted.state, "action": result.action, "after": deps.status().state}


@check("failure_names_the_log")
def _():
    import os

    old = os.environ.get("GEO_PIX2PIX_TORCH")
    os.environ["GEO_PIX2PIX_TORCH"] = "torch==0.0.1"  # no such release: pip fails
    try:
        deps.repair(cpu=True)
        raised = None
    except deps.DependencyError as exc:
        raised = {"message": str(exc), "log_path": str(exc.log_path),
                  "log_has_pip_output": "torch==0.0.1" in Path(exc.log_path).read_text(encoding="utf-8")}
    finally:
        os.environ["GEO_PIX2PIX_TORCH"] = old
    return {"raised": raised, "state": deps.status().state}


@check("uninstall")
def _():
    root = plugin.uninstall()
    return {"root": str(root), "exists": Path(root).exists(), "state": deps.status().state,
            "provider_registered": QgsApplication.processingRegistry().providerById("geopix2pix") is not None}


qgis.utils.unloadPlugin("geo_pix2pix_plugin")
app.exitQgis()
RESULT.write_text(json.dumps(results, indent=1, default=str))
