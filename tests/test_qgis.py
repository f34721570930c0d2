"""QGIS: the plugin's installation (here), and the provider, console helper and
``qgis_process`` in a real headless QGIS (in a subprocess run by QGIS's Python).

The QGIS part needs Debian's QGIS and a virtual environment of its Python with
geo-pix2pix installed, both made by ``.ci/setup-extra`` (``.venv-qgis``; another
interpreter can be named in ``GEO_PIX2PIX_QGIS_PYTHON``). Without them these tests
skip, saying so; in CI (``CI=true``) they fail instead, so they cannot silently not run.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio
from click.testing import CliRunner

import geo_pix2pix
from geo_pix2pix.cli.main import main
from geo_pix2pix.errors import MissingDependencyError, OutputExistsError, OutputPathError
from geo_pix2pix.qgis.install import PLUGIN_NAME, default_profile_dir, install_plugin, plugin_files

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_tiles" / "helsinki_map.tif"
SAMPLE_XYZ = ROOT / "sample_tiles" / "xyz"
SCRIPT = Path(__file__).parent / "qgis_scripts" / "run_in_qgis.py"
IN_CI = os.environ.get("CI", "").lower() == "true"


# -- the plugin and its installation: no QGIS needed -------------------------------------

def test_metadata_has_the_keys_qgis_requires_and_the_package_version():
    meta = configparser.ConfigParser()
    meta.read_string(plugin_files()["metadata.txt"].decode("utf-8"))
    general = meta["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                "repository"):
        assert key in general, key
    assert general["version"] == geo_pix2pix.__version__
    assert general["hasProcessingProvider"] == "yes"  # so qgis_process calls initProcessing
    assert general["icon"] in plugin_files()


def test_install_plugin_copies_the_plugin_and_records_where_geo_pix2pix_is(tmp_path):
    profile = tmp_path / "profile"
    profile.mkdir()
    result = install_plugin(profile)
    assert result.path == profile / "python" / "plugins" / PLUGIN_NAME
    assert not result.replaced
    files = sorted(p.name for p in result.path.iterdir())
    assert files == sorted([*plugin_files(), "install.json"])
    record = json.loads((result.path / "install.json").read_text())
    assert record["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert record["geo_pix2pix"] == geo_pix2pix.__version__
    # the recorded folders make geo_pix2pix importable (directly or through a .pth file)
    assert any(Path(d, "geo_pix2pix").is_dir() or list(Path(d).glob("*geo_pix2pix*.pth"))
               for d in record["site_dirs"])
    assert "def classFactory(iface)" in (result.path / "__init__.py").read_text()

    again = install_plugin(profile)  # an upgrade replaces our own earlier copy
    assert again.replaced and (again.path / "metadata.txt").exists()
    assert not [p for p in result.path.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_install_plugin_refuses_a_foreign_folder_and_a_missing_profile(tmp_path):
    foreign = tmp_path / "python" / "plugins" / PLUGIN_NAME
    foreign.mkdir(parents=True)
    (foreign / "metadata.txt").write_text("[general]\nname=something else\n")
    with pytest.raises(OutputExistsError, match="not a geo-pix2pix plugin: pass --overwrite"):
        install_plugin(tmp_path)
    assert (foreign / "metadata.txt").read_text().startswith("[general]\nname=something else")
    assert install_plugin(tmp_path, overwrite=True).replaced
    with pytest.raises(OutputPathError, match="does not exist: start QGIS once"):
        install_plugin(tmp_path / "missing")


def test_cli_install_plugin(tmp_path):
    result = CliRunner().invoke(main, ["qgis", "install-plugin", "--profile-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "qgis_process plugins enable geo_pix2pix_plugin" in result.output
    assert (tmp_path / "python" / "plugins" / PLUGIN_NAME / "metadata.txt").exists()
    missing = CliRunner().invoke(main, ["qgis", "install-plugin", "--profile-dir", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and missing.output.startswith("Error: QGIS profile folder")


@pytest.mark.parametrize("platform,env,expected", [
    ("linux", {"XDG_DATA_HOME": "/x/data"}, "/x/data/QGIS/QGIS3/profiles/default"),
    ("win32", {"APPDATA": "/x/Roaming"}, "/x/Roaming/QGIS/QGIS3/profiles/default"),
    ("darwin", {}, "HOME/Library/Application Support/QGIS/QGIS3/profiles/default"),
    ("linux", {"QGIS_CUSTOM_CONFIG_PATH": "/x/custom"}, "/x/custom/profiles/default"),
])
def test_default_profile_dir_per_os(monkeypatch, platform, env, expected):
    for name in ("XDG_DATA_HOME", "APPDATA", "QGIS_CUSTOM_CONFIG_PATH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "platform", platform)
    assert default_profile_dir() == Path(expected.replace("HOME", str(Path.home())))


def test_qgis_names_need_qgis_and_say_so():
    try:
        import qgis.core  # noqa: F401
    except ImportError:
        import geo_pix2pix.qgis as gq

        with pytest.raises(MissingDependencyError, match="needs QGIS's Python bindings"):
            gq.render_layer  # noqa: B018
    else:
        pytest.skip("QGIS is importable here: the message for its absence cannot be seen")


def test_isolate_rasterio_repairs_a_foreign_proj_data(tmp_path):
    # QGIS installers point PROJ_DATA at their own proj.db; here: a folder without one.
    code = ("from rasterio.crs import CRS\n"
            "try:\n    CRS.from_epsg(3067); print('before: ok')\n"
            "except Exception as e:\n    print('before: fails')\n"
            "from geo_pix2pix.qgis.compat import isolate_rasterio\n"
            "print(isolate_rasterio())\n"
            "print('after:', CRS.from_epsg(3067).to_epsg())\n")
    env = dict(os.environ, PROJ_DATA=str(tmp_path), PROJ_LIB=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "before: fails"
    assert "rasterio's PROJ reads" in lines[1]
    assert lines[2] == "after: 3067"


# -- a real QGIS ----------------------------------------------------------------------------

def _qgis_python() -> str:
    """The interpreter that imports both qgis and geo_pix2pix; skip (or, in CI, fail) without one."""
    candidates = [os.environ.get("GEO_PIX2PIX_QGIS_PYTHON"), str(ROOT / ".venv-qgis" / "bin" / "python")]
    reasons = []
    for py in filter(None, candidates):
        if not Path(py).exists():
            reasons.append(f"{py} does not exist")
            continue
        probe = subprocess.run([py, "-c", "import qgis.core, geo_pix2pix"], capture_output=True, text=True,
                               timeout=120)
        if probe.returncode == 0:
            return py
        reasons.append(f"{py} cannot import qgis.core and geo_pix2pix: {probe.stderr.strip().splitlines()[-1:]}")
    message = ("no Python with QGIS and geo-pix2pix (" + "; ".join(reasons) + "): run `bash .ci/setup-extra` "
               "(installs Debian's QGIS and builds .venv-qgis) or set GEO_PIX2PIX_QGIS_PYTHON")
    if IN_CI:
        pytest.fail("CI=true but " + message)
    pytest.skip(message)


def _qgis_env(tmp: Path) -> dict:
    runtime = tmp / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp / "qgis-config"),
               XDG_RUNTIME_DIR=str(runtime), PYTHONDONTWRITEBYTECODE="1")
    # QGIS's embedded Python finds its home through the first `python3` on PATH: an active
    # virtual environment's (as in CI, and under pytest) would lend it another Python's library.
    env["PATH"] = os.pathsep.join(["/usr/bin", env.get("PATH", "")])
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONHOME", None)
    return env


@pytest.fixture(scope="module")
def qgis_run(tmp_path_factory):
    """Run tests/qgis_scripts/run_in_qgis.py once in a headless QGIS; its results by check."""
    py = _qgis_python()
    tmp = tmp_path_factory.mktemp("qgis")
    env = _qgis_env(tmp)
    # As OSGeo4W and the macOS bundle do: PROJ_DATA names QGIS's (older) proj.db.
    if Path("/usr/share/proj/proj.db").exists():
        env["PROJ_DATA"] = "/usr/share/proj"
    result_file = tmp / "result.json"
    proc = subprocess.run([py, str(SCRIPT), str(SAMPLE), str(SAMPLE_XYZ), str(tmp / "work"), str(result_file)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert result_file.exists(), f"the QGIS script died (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    results = json.loads(result_file.read_text())
    return results, proc


def _get(qgis_run, name):
    results, _ = qgis_run
    assert name + ".error" not in results, results[name + ".error"]
    return results[name]


@pytest.mark.slow
def test_qgis_and_rasterio_gdal_work_in_one_process(qgis_run):
    env = _get(qgis_run, "environment")
    assert env["QGIS"].startswith("3.")
    both = _get(qgis_run, "both_gdals")
    assert both["osgeo_size"] == both["rasterio_size"] == [476, 783]
    west, south, east, north = both["rasterio_4326_bounds"]
    assert 24.9 < west < east < 25.0 and 60.1 < south < north < 60.2
    if "PROJ_DATA" in env:  # QGIS's older proj.db was forced on rasterio, and set aside
        assert "DATABASE.LAYOUT.VERSION" in _get(qgis_run, "proj_before_isolation")
    assert _get(qgis_run, "proj_after_isolation").startswith("PROJCS")


@pytest.mark.slow
def test_provider_lists_both_algorithms(qgis_run):
    assert _get(qgis_run, "algorithms") == ["geopix2pix:render", "geopix2pix:tiles"]
    assert _get(qgis_run, "algorithm_names") == {"geopix2pix:render": "Render aerial imagery from map",
                                                 "geopix2pix:tiles": "Regenerate XYZ tiles"}


@pytest.mark.slow
def test_processing_run_renders_a_layer_with_the_inputs_crs_and_extent(qgis_run):
    src, out = _get(qgis_run, "input"), _get(qgis_run, "processing_run")
    assert src["valid"] and out["valid"] and out["in_project"]
    assert out["crs"] == src["crs"] == "EPSG:3857"
    assert out["extent"] == pytest.approx(src["extent"], abs=1e-6)
    assert (out["width"], out["height"], out["bands"]) == (src["width"], src["height"], 3)
    assert out["files"] == ["aerial.tif"]  # nothing else beside it
    assert out["progress"] and out["progress"][-1] == 100.0 and out["progress"] == sorted(out["progress"])
    assert any("tiles rendered" in line for line in out["infos"])
    assert out["std"] > 5  # an image, not a flat fill


@pytest.mark.slow
def test_processing_render_at_int8_precision(qgis_run):
    got = _get(qgis_run, "processing_run_int8")
    assert got["same_grid"] and any("int8" in line for line in got["infos"])
    assert 0 < got["mean_diff"] < 6  # grey levels: another computation, the same picture


@pytest.mark.slow
def test_processing_render_at_bf16_precision(qgis_run):
    got = _get(qgis_run, "processing_run_bf16")
    assert got["same_grid"] and any("bf16" in line for line in got["infos"])
    assert 0 < got["mean_diff"] < 2  # bfloat16 rounding: within about a grey level


@pytest.mark.slow
def test_run_and_load_results_and_render_layer_add_the_result_to_the_project(qgis_run):
    loaded = _get(qgis_run, "run_and_load_results")
    assert loaded["layers_in_project"] == 1 and loaded["facts"]["valid"]
    new = _get(qgis_run, "render_layer")
    assert new["valid"] and new["in_project"] and new["name"] == "small map (aerial)"
    assert new["source"].endswith("/small/map_small_aerial.tif")
    assert new["crs"] == new["small"]["crs"]
    assert new["extent"] == pytest.approx(new["small"]["extent"], abs=1e-6)
    assert new["progress_reports"] > 0
    again = _get(qgis_run, "render_layer_by_name_again")
    assert again["source"].endswith("/small/map_small_aerial_2.tif") and again["name"] == "second"
    existing = _get(qgis_run, "render_layer_existing_output")
    assert "map_small_aerial.tif' exists: pass --overwrite" in existing["raised"] and existing["untouched"]


@pytest.mark.slow
def test_cancel_raises_and_leaves_no_file(qgis_run):
    cancel = _get(qgis_run, "cancel")
    assert cancel["canceled"] and cancel["raised"].startswith("Render canceled: no output was written")
    assert cancel["progress"] and cancel["progress"][-1] < 100
    console = _get(qgis_run, "cancel_render_layer")
    assert console["raised"] and "canceled" in console["raised"]
    assert console["work_dir_unchanged"] and console["layers_unchanged"]
    assert cancel["files"] == [] and console["files"] == []  # not even a hidden temporary file


@pytest.mark.slow
def test_errors_carry_the_library_message(qgis_run):
    err = _get(qgis_run, "error_library_message")
    assert "is not a readable geo-pix2pix checkpoint" in err["raised"] and not err["output_exists"]
    assert "Traceback" not in err["raised"]
    other = _get(qgis_run, "error_other_provider")
    assert other["raised"].startswith("InputRasterError: layer 'xyz' comes from the 'wms' data provider")
    assert "save the layer as a GeoTIFF" in other["raised"]


@pytest.mark.slow
def test_tiles_algorithm_makes_then_skips_unchanged_tiles_and_resumes_after_cancel(qgis_run):
    tiles = _get(qgis_run, "tiles")
    assert tiles["first"]["RENDERED"] == 9 and tiles["first"]["FAILED"] == 0
    assert tiles["again"]["RENDERED"] == 0 and tiles["again"]["UNCHANGED"] == 9
    assert tiles["exists"] and tiles["layer_valid"] and tiles["progress"] == [100.0]
    canceled = _get(qgis_run, "tiles_cancel")
    assert canceled["raised"].startswith("Tiles canceled: the tiles written so far are complete and kept")
    assert canceled["kept"] > 0 and canceled["temporary_files"] == []
    resumed = canceled["resumed"]  # goes on from the kept tiles, all 9 + 24 of zooms 15-16 in the end
    assert resumed["FAILED"] == 0 and resumed["RENDERED"] + resumed["UNCHANGED"] == 33
    assert resumed["UNCHANGED"] >= canceled["kept"]
    from_layer = _get(qgis_run, "tiles_from_layer_name")
    assert from_layer["result"]["RENDERED"] == len(from_layer["z14"]) > 0


@pytest.mark.slow
def test_qgis_process_finds_and_runs_the_plugin(tmp_path):
    py = _qgis_python()
    qgis_process = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
    if not Path(qgis_process).exists():  # Debian's wrapper adds --noversioncheck, which 3.22 rejects
        (pytest.fail if IN_CI else pytest.skip)("qgis_process.bin not found: run `bash .ci/setup-extra`")
    env = _qgis_env(tmp_path)
    profile = tmp_path / "qgis-config" / "profiles" / "default"
    profile.mkdir(parents=True)

    def run(*args, check=True):
        proc = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=300)
        if check:
            assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    # installed with QGIS's Python, as the README says; the plugin finds geo_pix2pix through install.json
    run(py, "-m", "geo_pix2pix", "qgis", "install-plugin", "--profile-dir", str(profile))
    run(qgis_process, "plugins", "enable", PLUGIN_NAME)
    listed = run(qgis_process, "list").stdout
    assert "geopix2pix:render" in listed and "geopix2pix:tiles" in listed, listed[-3000:]
    helped = run(qgis_process, "help", "geopix2pix:render").stdout
    assert "INPUT" in helped and "OVERLAP" in helped and "BATCH_SIZE" in helped and "DEVICE" in helped

    src = tmp_path / "map.tif"
    shutil.copy(SAMPLE, src)
    out = tmp_path / "aerial.tif"
    done = run(qgis_process, "--json", "run", "geopix2pix:render", "--", f"INPUT={src}", f"OUTPUT={out}",
               "BATCH_SIZE=4")
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["results"]["OUTPUT"] == str(out)
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert b.crs == a.crs and b.transform == a.transform and b.shape == a.shape and b.count == 3

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    failed = run(qgis_process, "run", "geopix2pix:render", "--", f"INPUT={src}", f"MODEL={bad}",
                 f"OUTPUT={tmp_path / 'never.tif'}", check=False)
    assert failed.returncode != 0
    assert "is not a readable geo-pix2pix checkpoint" in failed.stdout + failed.stderr
    assert not (tmp_path / "never.tif").exists()
