"""geo_pix2pix.qgis.add_live_layer in a real, headless QGIS (skipped without one, failed in CI)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_qgis import SAMPLE_XYZ, _qgis_env, _qgis_python

SCRIPT = Path(__file__).parent / "qgis_scripts" / "live_layer.py"


@pytest.mark.slow
def test_add_live_layer_serves_in_the_background_and_stops_with_qgis(tmp_path):
    py = _qgis_python()
    probe = subprocess.run([py, "-c", "import starlette, uvicorn"], capture_output=True, text=True, timeout=60)
    if probe.returncode:
        pytest.fail(f"{py} lacks the serve extra: .ci/setup-extra installs it ({probe.stderr.strip()[-300:]})")
    cache, result = tmp_path / "live", tmp_path / "result.json"
    proc = subprocess.run([py, str(SCRIPT), str(SAMPLE_XYZ), str(cache), str(result)], env=_qgis_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert result.exists(), f"the QGIS script died (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    r = json.loads(result.read_text())
    assert "error" not in r, r["error"]
    assert r["valid"] and r["provider"] == "wms" and r["in_project"]
    assert "type=xyz" in r["source"] and "127.0.0.1" in r["source"]
    assert r["servers"] == 1 and r["again_same_server"] and r["by_url"]
    assert "openstreetmap" in r["attribution"].lower()  # CopyModel: the map data's own attribution
    assert r["tile"][:2] == [200, "image/png"]
    assert r["running_after_quit"] is False
    # stopped cleanly: the cache's metadata was written and its rows describe whole tiles
    assert json.loads((cache / "tilejson.json").read_text())["tilejson"] == "3.0.0"
    assert (cache / "15/18654/9484.png").is_file()
