"""The plugin's first-use dialog, offscreen: what it says and offers; JSON out.

Run by tests/test_qgis_plugin.py with QGIS's own Python::

    QT_QPA_PLATFORM=offscreen QGIS_CUSTOM_CONFIG_PATH=CONFIG python plugin_dialog.py PLUGINS_DIR RESULT.json

PLUGINS_DIR holds the unzipped plugin; ``nvidia-smi`` on PATH decides the CUDA choice.
"""

from __future__ import annotations

import json
import sys
import traceback

PLUGINS, RESULT = sys.argv[1:3]
sys.path.insert(0, PLUGINS)

from qgis.core import QgsApplication  # noqa: E402

app = QgsApplication([], True)  # widgets need the GUI flag (offscreen platform)
app.initQgis()
results: dict = {}
try:
    from geo_pix2pix_plugin.dialog import DependencyDialog
    from geo_pix2pix_plugin.plugin import GeoPix2PixPlugin

    class Recorder(GeoPix2PixPlugin):
        def start_install(self, cpu=True, repair=False):  # what Install would start, not started here
            results["started"] = {"cpu": cpu, "repair": repair}

    plugin = Recorder(None)
    results["registered"] = plugin.initProcessing()
    dialog = DependencyDialog(plugin)
    results.update(text=dialog.label.text(), button=dialog.install_button.text(),
                   cuda_enabled=dialog.cuda_button.isEnabled(), cuda_text=dialog.cuda_button.text(),
                   cuda_checked=dialog.cuda_button.isChecked(), title=dialog.windowTitle())
    dialog.install_button.click()
except BaseException:  # noqa: BLE001 - recorded for the test to show
    results["error"] = traceback.format_exc()
app.exitQgis()
with open(RESULT, "w") as f:
    json.dump(results, f)
