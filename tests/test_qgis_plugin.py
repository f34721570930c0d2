"""The plugin zip (``geo-pix2pix qgis build-plugin``) and its first-use dependency install.

Without QGIS: the zip passes the plugin repository's checks; the installer's decisions
(where geo-pix2pix and torch come from, which numpy, CUDA or not, what counts as a
broken environment) on files made here.

With Debian's QGIS (``bash .ci/setup-extra``): tests/qgis_scripts/plugin_from_zip.py,
run once by plain ``/usr/bin/python3`` (no virtual environment, so geo-pix2pix is not
importable before), installs the zip into a fresh profile as the plugin manager does,
installs the dependencies from a wheel of this checkout (the CPU build of torch), renders
the sample map, then breaks, repairs and removes the environment. Without QGIS these
skip; with ``CI=true`` they fail.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import geo_pix2pix
from geo_pix2pix.cli.main import main
from geo_pix2pix.qgis.build import MAX_SIZE, PluginCheckError, _zip_bytes, build_plugin, check_plugin_zip
from geo_pix2pix.qgis.install import PLUGIN_NAME, plugin_files
from geo_pix2pix.qgis.plugin import deps

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_tiles" / "helsinki_map.tif"
SCRIPT = Path(__file__).parent / "qgis_scripts" / "plugin_from_zip.py"
IN_CI = os.environ.get("CI", "").lower() == "true"
QGIS_PYTHON = "/usr/bin/python3"


# -- the zip ------------------------------------------------------------------------------------

def test_build_plugin_writes_a_zip_the_plugin_repository_accepts(tmp_path):
    out = tmp_path / "geo_pix2pix_plugin.zip"
    result = CliRunner().invoke(main, ["qgis", "build-plugin", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Install from ZIP" in result.output
    meta = check_plugin_zip(out)
    assert meta["version"] == geo_pix2pix.__version__ and meta["qgisMinimumVersion"] == "3.22"
    assert meta["hasProcessingProvider"] == "yes"
    for dependency in ("PyTorch", "rasterio", "geo-pix2pix Python package"):
        assert dependency in meta["about"]
    assert meta["changelog"].startswith(geo_pix2pix.__version__)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
    assert sorted(names) == sorted(f"{PLUGIN_NAME}/{n}" for n in plugin_files())
    assert {"LICENSE", "icon.png", "deps.py", "__init__.py"} <= {n.split("/")[1] for n in names}
    assert not [n for n in names if n.endswith((".pt", ".whl", ".so", ".pyc", ".onnx"))]
    assert out.stat().st_size < MAX_SIZE / 100  # sources only: far below the limit
    again = build_plugin(tmp_path / "again.zip")
    assert again.path.read_bytes() == out.read_bytes()  # reproducible


def test_build_plugin_refuses_to_overwrite(tmp_path):
    out = tmp_path / "p.zip"
    out.write_bytes(b"mine")
    result = CliRunner().invoke(main, ["qgis", "build-plugin", "-o", str(out)])
    assert result.exit_code == 1 and "exists: pass --overwrite" in result.output
    assert out.read_bytes() == b"mine"
    assert CliRunner().invoke(main, ["qgis", "build-plugin", "-o", str(out), "--overwrite"]).exit_code == 0
    check_plugin_zip(out)


def test_build_plugin_refuses_a_metadata_version_other_than_the_package(tmp_path, monkeypatch):
    import geo_pix2pix.qgis.build as build

    monkeypatch.setattr(build, "__version__", "9.9.9")
    rule = f"has version={geo_pix2pix.__version__} but geo-pix2pix is 9.9.9: set version=9.9.9"
    with pytest.raises(PluginCheckError, match=rule):
        build_plugin(tmp_path / "p.zip")
    assert not (tmp_path / "p.zip").exists()


def _variant(change):
    files = dict(plugin_files())
    change(files)
    data = _zip_bytes(files)
    return io.BytesIO(data), len(data)


def _meta(text_change):
    def change(files):
        files["metadata.txt"] = text_change(files["metadata.txt"].decode()).encode()
    return change


@pytest.mark.parametrize("change,message", [
    (lambda f: f.pop("LICENSE"), "lacks geo_pix2pix_plugin/LICENSE"),
    (lambda f: f.update({"__pycache__/x.cpython-311.pyc": b"x"}), "refuses .pyc"),
    (lambda f: f.update({"_native.so": b"\x7fELF...."}), "is a binary"),
    (lambda f: f.update({"model.pt": b"PK\x03\x04...."}), "is a binary"),
    (lambda f: f.update({"wheels.txt": b"PK\x03\x04...."}), "is a binary or an archive"),
    (_meta(lambda t: t.replace("version=0.1.0", "version=0.1 beta")), "version='0.1 beta'"),
    (_meta(lambda t: t.replace("qgisMinimumVersion=3.22", "qgisMinimumVersion=three")), "is not a version"),
    (_meta(lambda t: t.replace("\ntracker=", "\nbugs=")), "lacks tracker"),
    (_meta(lambda t: t.replace("repository=https://", "repository=")), "is not an http(s) URL"),
    (_meta(lambda t: t.replace("icon=icon.png", "icon=missing.png")), "names no file of the zip"),
])
def test_check_plugin_zip_refuses_what_the_repository_refuses(change, message):
    data, size = _variant(change)
    with pytest.raises(PluginCheckError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_plugin_zip(data, size=size)


def test_check_plugin_zip_refuses_an_oversized_zip():
    data, _ = _variant(lambda f: None)
    with pytest.raises(PluginCheckError, match="at most 25 MB: leave model weights and wheels out"):
        check_plugin_zip(data, size=MAX_SIZE + 1)


# -- the installer's decisions --------------------------------------------------------------------

def test_package_source_default_wheel_and_folder(tmp_path, monkeypatch):
    v = deps.plugin_version()
    assert v == geo_pix2pix.__version__
    assert deps.package_args(v) == [f"geo-pix2pix[qgis]=={v}"]
    wheel = tmp_path / f"geo_pix2pix-{v}-py3-none-any.whl"
    wheel.write_bytes(b"")
    assert deps.package_args(v, str(wheel)) == [f"geo-pix2pix[qgis] @ {wheel.as_uri()}"]
    assert deps.package_args(v, str(tmp_path)) == ["--find-links", str(tmp_path), f"geo-pix2pix[qgis]=={v}"]
    other = tmp_path / "geo_pix2pix-9.9.9-py3-none-any.whl"
    other.write_bytes(b"")
    with pytest.raises(deps.DependencyError, match="is geo-pix2pix 9.9.9 but this plugin is"):
        deps.package_args(v, str(other))
    with pytest.raises(deps.DependencyError, match="neither a .whl file nor a folder"):
        deps.package_args(v, str(tmp_path / "nothing"))
    monkeypatch.setenv("GEO_PIX2PIX_SOURCE", str(tmp_path))
    assert deps.setting("source") == str(tmp_path)


def test_torch_build_and_index(monkeypatch):
    monkeypatch.delenv("GEO_PIX2PIX_TORCH", raising=False)
    monkeypatch.delenv("GEO_PIX2PIX_TORCH_INDEX", raising=False)
    assert deps.torch_args("cpu") == ["torch", "--index-url", "https://download.pytorch.org/whl/cpu"]
    assert deps.torch_args("cu124") == ["torch", "--index-url", "https://download.pytorch.org/whl/cu124"]
    monkeypatch.setenv("GEO_PIX2PIX_TORCH", "torch==2.13.0")
    monkeypatch.setenv("GEO_PIX2PIX_TORCH_INDEX", "none")  # pip's own configuration
    assert deps.torch_args("cpu") == ["torch==2.13.0"]


def _fake_nvidia_smi(folder: Path, cuda: str | None) -> None:
    folder.mkdir(exist_ok=True)
    exe = folder / "nvidia-smi"
    if cuda is None:
        exe.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    else:
        exe.write_text("#!/bin/sh\ncase \"$1\" in --query-gpu*) echo 'NVIDIA H200';; *) echo "
                       f"'| NVIDIA-SMI 570.1  Driver Version: 570.1  CUDA Version: {cuda} |';; esac\n")
    exe.chmod(0o755)


@pytest.mark.parametrize("cuda,expected", [("12.4", "cu124"), ("12.5", "cu124"), ("13.0", "cu128"),
                                           ("11.8", "cu118"), ("11.4", None), (None, None)])
def test_cuda_build_offered_only_where_nvidia_smi_reports_a_gpu(tmp_path, monkeypatch, cuda, expected):
    _fake_nvidia_smi(tmp_path / "bin", cuda)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    choice = deps.cuda_choice()
    assert (choice[0] if choice else None) == expected
    if choice:
        assert "NVIDIA H200" in choice[1]


def test_no_nvidia_smi_means_cpu_only_and_cuda_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert deps.cuda_choice() is None
    with pytest.raises(deps.DependencyError, match="nvidia-smi reports no GPU here: install the CPU build"):
        deps.install(False, profile=tmp_path)
    assert not (tmp_path / deps.ROOT_NAME).exists()  # refused before anything was made


def test_numpy_decided_by_what_qgis_python_has(tmp_path, monkeypatch):
    # a fake osgeo whose _gdal_array was built against numpy 1 (it names numpy.core only)
    osgeo = tmp_path / "osgeo"
    osgeo.mkdir()
    (osgeo / "__init__.py").write_text("")
    (osgeo / "_gdal_array.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\0ELF numpy.core.multiarray \0")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    facts = deps.probe(sys.executable)
    assert facts["gdal_array_numpy"] == 1 and facts["gdal_array"].endswith(".so")
    assert deps.numpy_constraint({**facts, "numpy": None})[0] == "numpy<2"
    (osgeo / "_gdal_array.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\0 numpy._core._multiarray_umath \0")
    assert deps.probe(sys.executable)["gdal_array_numpy"] == 2
    assert deps.numpy_constraint({"numpy": None, "gdal_array_numpy": 2})[0] == ""
    # the distribution's own numpy is kept whatever it is
    assert deps.numpy_constraint({"numpy": "1.24.2", "gdal_array_numpy": 1})[0] == "numpy==1.24.2"


def _fake_environment(profile: Path, version: str, module: str = "affine") -> Path:
    """A plugin environment as install() leaves it, with one small distribution."""
    root = profile / deps.ROOT_NAME
    site = root / "venv" / "lib" / "python3.11" / "site-packages"
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text("")
    info = site / f"{module}-2.4.0.dist-info"
    info.mkdir()
    (info / "RECORD").write_text(f"{module}/__init__.py,sha256=x,0\n{module}/__pycache__/__init__.cpython-311.pyc,,\n"
                                 f"{module}-2.4.0.dist-info/RECORD,,\n")
    python = root / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    (root / "state.json").write_text(json.dumps({"plugin_version": version, "torch_variant": "cpu",
                                                 "distributions": {module.replace("_", "-"): "2.4.0"}}))
    return site


def test_status_tells_ready_missing_incomplete_broken_outdated(tmp_path):
    assert deps.status(tmp_path).state == "missing"
    site = _fake_environment(tmp_path, deps.plugin_version())
    assert deps.status(tmp_path).state == "ready"
    (site / "affine" / "__init__.py").unlink()
    broken = deps.status(tmp_path)
    assert broken.state == "broken" and broken.damaged == ("affine",)
    assert "affine: affine/__init__.py" in broken.detail and broken.detail.endswith("Repair")
    shutil.rmtree(site / "affine-2.4.0.dist-info")  # gone altogether
    assert deps.status(tmp_path).damaged == ("affine",)
    (tmp_path / deps.ROOT_NAME / "state.json").unlink()  # an install that never finished
    assert deps.status(tmp_path).state == "incomplete"
    _fake_environment(tmp_path / "other", "0.0.1")
    assert deps.status(tmp_path / "other").state == "outdated"
    assert deps.uninstall(tmp_path) == tmp_path / deps.ROOT_NAME
    assert deps.status(tmp_path).state == "missing"


def test_a_bad_source_is_refused_before_a_ready_environment_is_touched(tmp_path, monkeypatch):
    _fake_environment(tmp_path, deps.plugin_version())
    monkeypatch.setenv("GEO_PIX2PIX_SOURCE", str(tmp_path / "missing.whl"))
    with pytest.raises(deps.DependencyError, match="missing.whl' is not a file: name an existing geo-pix2pix wheel"):
        deps.repair(cpu=True, profile=tmp_path)
    assert deps.status(tmp_path).state == "ready"


def test_activate_puts_the_environment_first_or_asks_for_a_restart(tmp_path, monkeypatch):
    import types

    monkeypatch.setattr(sys, "path", list(sys.path))
    site = _fake_environment(tmp_path, deps.plugin_version(), module="gp2p_probe")
    usable, why = deps.activate(tmp_path)
    assert usable and sys.path[0] == str(site)
    # a module the environment brings, already loaded from elsewhere: only a restart swaps it
    outside = types.ModuleType("gp2p_probe")
    outside.__file__ = "/usr/lib/python3/dist-packages/gp2p_probe/__init__.py"
    monkeypatch.setitem(sys.modules, "gp2p_probe", outside)
    usable, why = deps.activate(tmp_path)
    assert not usable and why.startswith("restart QGIS to use geo-pix2pix: gp2p_probe (/usr/lib/python3/dist-")
    nothing = tmp_path / "nothing"
    assert deps.activate(nothing) == (False, f"no environment at {nothing / deps.ROOT_NAME / 'venv'}")


def test_second_install_of_a_ready_environment_runs_nothing(tmp_path, monkeypatch):
    _fake_environment(tmp_path, deps.plugin_version())
    monkeypatch.setattr(deps.subprocess, "Popen", None)  # any pip run would fail
    result = deps.install(cpu=True, profile=tmp_path)
    assert result.action == "none" and result.torch == "cpu"


# -- in QGIS ----------------------------------------------------------------------------------

def _need_qgis_python() -> None:
    probe = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True, timeout=120) \
        if Path(QGIS_PYTHON).exists() else None
    if probe is None or probe.returncode != 0:
        why = probe.stderr.strip().splitlines()[-1:] if probe else f"{QGIS_PYTHON} does not exist"
        message = f"QGIS's Python ({QGIS_PYTHON}) cannot import qgis.core ({why}): run `bash .ci/setup-extra`"
        (pytest.fail if IN_CI else pytest.skip)(message)


def _qgis_env(tmp: Path) -> dict:
    runtime = tmp / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp / "qgis-config"),
               XDG_RUNTIME_DIR=str(runtime), PYTHONDONTWRITEBYTECODE="1")
    env["PATH"] = os.pathsep.join(["/usr/bin", env.get("PATH", "")])  # QGIS's Python, not this venv's
    for name in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def from_zip(tmp_path_factory):
    """Build the zip and a wheel of this checkout; run plugin_from_zip.py once; its results."""
    _need_qgis_python()
    tmp = tmp_path_factory.mktemp("plugin")
    env = _qgis_env(tmp)
    clean = subprocess.run([QGIS_PYTHON, "-c", "import geo_pix2pix"], env=env, cwd=tmp, capture_output=True)
    assert clean.returncode != 0, "geo_pix2pix is importable by QGIS's Python already: not a clean state"
    zip_path = build_plugin(tmp / "geo_pix2pix_plugin.zip").path
    wheels = tmp / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                           capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stderr[-3000:]
    # geo-pix2pix from the wheel folder; the CPU build of torch that this machine's pip
    # finds offline, pinned as README's install command pins it (no index beyond pip's own)
    torch_pin = re.search(r'torch==[^\s"`]+', (ROOT / "README.md").read_text()).group(0)
    env.update(GEO_PIX2PIX_SOURCE=str(wheels), GEO_PIX2PIX_TORCH=torch_pin, GEO_PIX2PIX_TORCH_INDEX="none")
    result = tmp / "result.json"
    proc = subprocess.run([QGIS_PYTHON, str(SCRIPT), str(zip_path), str(SAMPLE), str(tmp / "work"), str(result)],
                          env=env, cwd=tmp, capture_output=True, text=True, timeout=3600)
    assert result.exists(), f"the QGIS script died (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    results = json.loads(result.read_text())
    results["_profile"] = str(tmp / "qgis-config" / "profiles" / "default")
    return results, proc


def _get(from_zip, name):
    results, proc = from_zip
    assert name + ".error" not in results, results[name + ".error"]
    assert name in results, f"{name} was not reached:\n{proc.stderr[-4000:]}"
    return results[name]


@pytest.mark.slow
def test_zip_installs_like_the_plugin_manager_and_says_what_is_missing(from_zip):
    clean = _get(from_zip, "clean_state")
    assert clean["importable"] == {"geo_pix2pix": False, "torch": False, "rasterio": False}
    got = _get(from_zip, "install_zip")
    assert got["loaded"] and got["started"] and not got["provider_registered"]
    assert "geo-pix2pix cannot run" in got["error"] and "cannot import geo_pix2pix" in got["error"]
    assert "the plugin's own environment: no environment at" in got["error"]
    assert "metadata.txt" in got["files"] and "deps.py" in got["files"]


@pytest.mark.slow
def test_headless_install_into_the_profile_then_render_without_restart(from_zip):
    got = _get(from_zip, "install")
    profile = from_zip[0]["_profile"]
    assert got["before"] == "missing" and got["action"] == "install" and got["after"] == "ready"
    assert got["root"] == str(Path(profile) / "geo_pix2pix_plugin")
    assert got["torch"] == "cpu" and got["record"]["versions"]["torch"].endswith("+cpu")
    assert got["record"]["versions"]["geo_pix2pix"] == geo_pix2pix.__version__
    # Debian's numpy (the one its GDAL bindings use) is kept, not shadowed by a second copy
    assert got["numpy"].startswith("numpy==1.") and not got["own_numpy"]
    assert got["record"]["versions"]["osgeo"]  # QGIS's gdal_array imported beside the environment's packages
    percents = [p for p, _ in got["progress"]]
    assert percents == sorted(percents) and percents[-1] == 100
    assert any("installing torch" in m for _, m in got["progress"])
    live = _get(from_zip, "activate_without_restart")
    assert live["provider_registered"] and live["error"] is None and live["render_layer"]
    assert live["geo_pix2pix_file"].startswith(got["site_packages"])
    assert live["algorithms"] == ["geopix2pix:render", "geopix2pix:tiles"]
    render = _get(from_zip, "render")
    src, out = render["input"], render["output"]
    assert out["valid"] and out["crs"] == src["crs"] == "EPSG:3857"
    assert out["extent"] == pytest.approx(src["extent"], abs=1e-6)
    assert (out["width"], out["height"], out["bands"]) == (src["width"], src["height"], 3)


@pytest.mark.slow
def test_second_run_finds_the_environment_and_installs_nothing(from_zip):
    got = _get(from_zip, "second_run")
    assert got["action"] == "none" and got["log_unchanged"]


@pytest.mark.slow
def test_deleted_file_is_detected_and_repaired_in_a_task(from_zip):
    got = _get(from_zip, "broken_then_repair")
    assert got["broken"] == "broken" and got["damaged"] == ["affine"] and "affine/__init__.py" in got["detail"]
    assert got["task_was_running"] and got["task_done"]  # in QGIS's task manager, the script kept running
    assert got["task_error"] is None and got["action"] == "repair" and got["after"] == "ready" and got["restored"]
    assert len(got["progress"]) > 2 and got["progress"][-1] == 100  # progress went through the task
    assert got["provider_registered"]


@pytest.mark.slow
def test_interrupted_pip_leaves_an_incomplete_environment_that_repair_finishes(from_zip):
    got = _get(from_zip, "interrupted_then_repair")
    assert got["raised"] and "canceled" in got["raised"] and "Repair" in got["raised"]
    assert got["interrupted"] == "incomplete" and got["action"] == "repair" and got["after"] == "ready"


@pytest.mark.slow
def test_pip_failure_names_the_full_log(from_zip):
    got = _get(from_zip, "failure_names_the_log")
    raised = got["raised"]
    assert raised and raised["log_path"].endswith("geo_pix2pix_plugin/install.log")
    assert f"the full log is {raised['log_path']}" in raised["message"]
    assert raised["log_has_pip_output"]
    assert got["state"] == "incomplete"


@pytest.mark.slow
def test_uninstall_removes_the_environment(from_zip):
    got = _get(from_zip, "uninstall")
    assert not got["exists"] and got["state"] == "missing" and not got["provider_registered"]
    assert not (Path(from_zip[0]["_profile"]) / "geo_pix2pix_plugin").exists()


@pytest.mark.slow
@pytest.mark.parametrize("gpu", [False, True])
def test_first_use_dialog_says_what_is_missing_and_offers_cuda_only_with_a_gpu(tmp_path, gpu):
    _need_qgis_python()
    env = _qgis_env(tmp_path)
    plugins = tmp_path / "plugins"
    with zipfile.ZipFile(build_plugin(tmp_path / "p.zip").path) as zf:
        zf.extractall(plugins)
    if gpu:
        _fake_nvidia_smi(tmp_path / "bin", "12.6")
        env["PATH"] = os.pathsep.join([str(tmp_path / "bin"), env["PATH"]])
    result = tmp_path / "dialog.json"
    proc = subprocess.run([QGIS_PYTHON, str(SCRIPT.parent / "plugin_dialog.py"), str(plugins), str(result)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.exists(), f"the QGIS script died (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    got = json.loads(result.read_text())
    assert "error" not in got, got["error"]
    assert got["registered"] is False  # nothing to register before the install
    profile_root = str(tmp_path / "qgis-config" / "profiles" / "default" / "geo_pix2pix_plugin")
    assert "cannot import geo_pix2pix" in got["text"] and profile_root in got["text"]
    assert "install.log" in got["text"] and got["button"] == "Install"
    assert got["cuda_enabled"] is gpu and got["cuda_checked"] is gpu
    if gpu:
        assert "NVIDIA H200" in got["cuda_text"] and "cu126" in got["cuda_text"]
    assert got["started"] == {"cpu": not gpu, "repair": False}  # Install starts the task with the choice
