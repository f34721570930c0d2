"""add_live_layer in a headless QGIS: serve SOURCE in the background, add its XYZ layer.

Run by tests/test_qgis_live.py with the Python QGIS uses::

    QT_QPA_PLATFORM=offscreen python live_layer.py SAMPLE_XYZ CACHE RESULT.json
"""

from __future__ import annotations

import json
import sys
import traceback
import urllib.request
from pathlib import Path

XYZ, CACHE, RESULT = (Path(p) for p in sys.argv[1:4])
results: dict = {}
try:
    from qgis.core import QgsApplication, QgsProject

    app = QgsApplication([], False)
    app.initQgis()
    from geo_pix2pix.qgis import add_live_layer
    from geo_pix2pix.qgis.live import _servers
    from geo_pix2pix.tiles import CopyModel

    layer = add_live_layer(str(XYZ), str(CACHE), model=CopyModel(), zooms="14-16", render_zoom=15)
    server = next(iter(_servers.values()))
    again = add_live_layer(str(XYZ), str(CACHE), model=CopyModel(), zooms="14-16", render_zoom=15)
    by_url = add_live_layer(url=server.url, name="by url")
    with urllib.request.urlopen(server.url + "15/18654/9484.png", timeout=120) as r:
        tile = (r.status, r.headers["Content-Type"], len(r.read()))
    results.update(
        valid=layer.isValid(), provider=layer.providerType(), source=layer.source(),
        in_project=bool(QgsProject.instance().mapLayer(layer.id())), servers=len(_servers),
        again_same_server=again.source() == layer.source(), by_url=by_url.source() == layer.source(),
        attribution=layer.attribution(), tile=list(tile))
    app.aboutToQuit.emit()  # what QGIS emits when it quits
    results["running_after_quit"] = server.running
    app.exitQgis()
except BaseException:  # noqa: BLE001 - recorded for the test to show
    results["error"] = traceback.format_exc()
RESULT.write_text(json.dumps(results))
