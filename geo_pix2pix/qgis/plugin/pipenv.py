"""How the plugin's environment is made: QGIS's Python, pip's arguments, pip run with a log.

The mechanics behind :mod:`.deps` (which decides when to run them): where QGIS's Python
is and what it was built with (numpy, osgeo), which torch build suits this machine,
what pip is asked for geo-pix2pix and torch, and running commands with their whole
output appended to the install log while progress and cancellation are polled. No QGIS
import at import time; settings are read through ``QgsSettings`` only when asked.
"""

from __future__ import annotations

import configparser
import glob
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


HERE = Path(__file__).resolve().parent
#: Under the profile folder, beside (not inside) python/plugins: upgrading the plugin
#: through the plugin manager replaces its folder, and must not take the environment with it.
ROOT_NAME = "geo_pix2pix_plugin"
SETTINGS_GROUP = "geo_pix2pix_plugin"
ENV_VARS = {"source": "GEO_PIX2PIX_SOURCE", "torch": "GEO_PIX2PIX_TORCH", "torch_index": "GEO_PIX2PIX_TORCH_INDEX"}
TORCH_INDEX = "https://download.pytorch.org/whl/{}"
#: PyTorch's CUDA builds, newest first: (CUDA version, index name). The newest one
#: the driver supports (nvidia-smi's "CUDA Version") is offered.
CUDA_BUILDS = (((12, 8), "cu128"), ((12, 6), "cu126"), ((12, 4), "cu124"), ((12, 1), "cu121"),
               ((11, 8), "cu118"))


class DependencyError(RuntimeError):
    """Installing or using the plugin's environment failed; the message says what to do next."""

    def __init__(self, message: str, log_path: Path | None = None) -> None:
        super().__init__(message)
        self.log_path = log_path


class InstallCanceled(DependencyError):
    """The install was cancelled; the environment is left incomplete, for Repair."""


# -- places -----------------------------------------------------------------------------------

def profile_dir() -> Path:
    """The active QGIS profile folder (``QgsApplication.qgisSettingsDirPath()``)."""
    try:
        from qgis.core import QgsApplication
    except ImportError as exc:
        raise DependencyError("no QGIS here to ask for the profile folder: pass profile=<QGIS profile folder>") from exc
    path = QgsApplication.qgisSettingsDirPath()
    if not path:
        raise DependencyError("QGIS has no profile folder yet (QgsApplication not initialised): pass profile=...")
    return Path(path)


def environment_root(profile: os.PathLike | None = None) -> Path:
    """``<profile>/geo_pix2pix_plugin``: the environment (``venv``), ``install.log``, ``state.json``."""
    return Path(profile if profile is not None else profile_dir()) / ROOT_NAME


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def site_packages(venv: Path) -> Path | None:
    pattern = "Lib/site-packages" if os.name == "nt" else "lib/python*/site-packages"
    found = sorted(glob.glob(str(venv / pattern)))
    return Path(found[0]) if found else None


def plugin_version() -> str:
    """The plugin's version (metadata.txt), which is the geo-pix2pix version it installs."""
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(HERE / "metadata.txt", encoding="utf-8")
    return meta.get("general", "version")


def setting(name: str) -> str:
    """A source setting: the environment variable, else the QGIS setting, else ''."""
    value = os.environ.get(ENV_VARS[name])
    if value is not None:
        return value.strip()
    try:
        from qgis.core import QgsSettings

        return str(QgsSettings().value(f"{SETTINGS_GROUP}/{name}", "") or "").strip()
    except Exception:  # noqa: BLE001 - no QGIS (headless tools), or no settings yet
        return ""


# -- QGIS's Python and what it was built with ---------------------------------------------------

def base_python() -> str:
    """The Python interpreter of this process, runnable as a program.

    Inside QGIS ``sys.executable`` is often QGIS itself (``/usr/bin/qgis``,
    ``qgis-bin.exe``); the interpreter then lies under ``sys.exec_prefix``.
    """
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [sys.executable, getattr(sys, "_base_executable", "")]
    if os.name == "nt":
        candidates += [os.path.join(sys.exec_prefix, n) for n in ("python.exe", "python3.exe")]
    else:
        candidates += [os.path.join(sys.exec_prefix, "bin", n) for n in (f"python{want}", "python3", "python")]
    tried = []
    for exe in dict.fromkeys(c for c in candidates if c):
        if not os.path.basename(exe).lower().startswith("python") or not os.path.isfile(exe):
            continue
        try:
            out = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60, env=child_env())
        except (OSError, subprocess.SubprocessError) as exc:
            tried.append(f"{exe} ({exc})")
            continue
        if out.returncode == 0 and out.stdout.strip() == want:
            return exe
        tried.append(f"{exe} (Python {out.stdout.strip() or '?'})")
    raise DependencyError(f"cannot find the Python {want} that QGIS runs (tried: {', '.join(tried) or 'none'}; "
                          f"sys.executable={sys.executable!r}, sys.exec_prefix={sys.exec_prefix!r}): "
                          "install geo-pix2pix by hand as the README's QGIS section says")


_PROBE = r"""
import glob, importlib.util, json, os
out = {"numpy": None, "gdal_array": None, "gdal_array_numpy": None}
try:
    from importlib.metadata import version
    out["numpy"] = version("numpy")
except Exception:
    pass
spec = importlib.util.find_spec("osgeo")
if spec and spec.submodule_search_locations:
    for folder in spec.submodule_search_locations:
        for path in glob.glob(os.path.join(folder, "_gdal_array*")):
            out["gdal_array"] = path
            with open(path, "rb") as f:
                data = f.read()
            # numpy 2 builds import numpy._core; numpy 1 builds only know numpy.core
            out["gdal_array_numpy"] = 2 if b"numpy._core" in data else 1 if b"numpy" in data else None
print(json.dumps(out))
"""


def probe(python: str) -> dict:
    """What ``python`` has: its numpy's version, and which numpy major its osgeo was built for."""
    out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120, env=child_env())
    if out.returncode != 0:
        raise DependencyError(f"{python} could not be probed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def numpy_constraint(facts: dict) -> tuple[str, str]:
    """The numpy requirement for the environment, and why.

    The distribution's numpy is kept when there is one: QGIS's compiled modules (GDAL's
    Python bindings) were built against it and may already have loaded it in this
    process, where a second numpy cannot replace it. Without one, numpy stays below 2
    when osgeo's ``_gdal_array`` was built against numpy 1 (its ABI does not load numpy 2).
    """
    if facts.get("numpy"):
        return (f"numpy=={facts['numpy']}",
                f"QGIS's Python has numpy {facts['numpy']} (the one its compiled modules use): kept")
    if facts.get("gdal_array_numpy") == 1:
        return "numpy<2", f"{facts['gdal_array']} was built against numpy 1: numpy<2"
    return "", "no numpy in QGIS's Python and no numpy 1 module seen: any numpy"


def cuda_choice(run: Callable = subprocess.run) -> tuple[str, str] | None:
    """``(index name, description)`` of the CUDA build of torch for this machine's GPU, or None.

    From ``nvidia-smi``: the GPU's name and the highest CUDA version its driver supports.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = run([exe], capture_output=True, text=True, timeout=30)
        names = run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("nvidia-smi failed (%s): CPU build only", exc)
        return None
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", out.stdout or "")
    if out.returncode != 0 or not m:
        return None
    driver = (int(m.group(1)), int(m.group(2)))
    gpu = (names.stdout or "").strip().splitlines()
    for version, index in CUDA_BUILDS:
        if version <= driver:
            return index, f"{gpu[0] if gpu else 'NVIDIA GPU'}, driver for CUDA {driver[0]}.{driver[1]}"
    return None


# -- what pip is asked ------------------------------------------------------------------------

def package_args(version: str, source: str = "") -> list[str]:
    """pip's arguments for geo-pix2pix ``version`` (with its ``qgis`` extra) from ``source``."""
    if not source:
        return [f"geo-pix2pix[qgis]=={version}"]
    path = Path(source).expanduser()
    if source.endswith(".whl"):
        if not path.is_file():
            raise DependencyError(f"{ENV_VARS['source']}/source {source!r} is not a file: name an existing "
                                  "geo-pix2pix wheel, a folder of wheels, or leave it empty for the package index")
        wheel_version = path.name.split("-")[1] if path.name.count("-") >= 2 else "?"
        if wheel_version != version:
            raise DependencyError(f"wheel {path.name} is geo-pix2pix {wheel_version} but this plugin is {version}: "
                                  f"use the geo-pix2pix {version} wheel (or the plugin of {wheel_version})")
        return [f"geo-pix2pix[qgis] @ {path.resolve().as_uri()}"]
    if path.is_dir():
        return ["--find-links", str(path.resolve()), f"geo-pix2pix[qgis]=={version}"]
    raise DependencyError(f"{ENV_VARS['source']}/source {source!r} is neither a .whl file nor a folder: name a "
                          "geo-pix2pix wheel, a folder of wheels, or leave it empty for the package index")


def torch_args(variant: str) -> list[str]:
    """pip's arguments for the torch build ``variant`` ("cpu" or a CUDA index name)."""
    index = setting("torch_index")
    args = [setting("torch") or "torch"]
    if index.lower() == "none":
        return args
    return [*args, "--index-url", index or TORCH_INDEX.format(variant)]


# -- running things ---------------------------------------------------------------------------

def child_env() -> dict:
    env = dict(os.environ)
    # An active virtual environment's variables would point pip at the wrong Python.
    for name in ("VIRTUAL_ENV", "PYTHONHOME", "__PYVENV_LAUNCHER__"):
        env.pop(name, None)
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1", PYTHONIOENCODING="utf-8")
    return env


class Runner:
    """Runs commands with their whole output appended to the log; progress from pip's lines."""

    def __init__(self, log_path: Path, progress: Progress | None, is_canceled: Callable[[], bool] | None):
        self.log_path = log_path
        self.progress = progress or (lambda pct, msg: None)
        self.is_canceled = is_canceled or (lambda: False)
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        log.info(text)

    def run(self, cmd: list, what: str, start: float, end: float) -> str:
        """Run ``cmd``; progress moves from ``start`` towards ``end``; its output, or DependencyError."""
        self.note(f"{what}: {subprocess.list2cmdline([str(c) for c in cmd])}")
        self.progress(start, what)
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                encoding="utf-8", errors="replace", env=child_env())
        lines: list[str] = []
        steps = [0]

        def read() -> None:
            with open(self.log_path, "a", encoding="utf-8") as f:
                for line in proc.stdout:
                    f.write(line)
                    f.flush()
                    lines.append(line.rstrip())
                    if line.startswith(("Collecting", "Downloading", "Installing collected", "Successfully")):
                        steps[0] += 1
                        # pip does not say how many steps are coming: approach `end` without reaching it
                        self.progress(start + (end - start) * (1 - 0.85 ** steps[0]), line.strip()[:120])

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while proc.poll() is None:
            if self.is_canceled():
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                reader.join(10)
                proc.stdout.close()
                self.note(f"{what}: canceled")
                raise InstallCanceled(f"{what} was canceled: the environment is incomplete; press Repair to finish "
                                      f"it (log: {self.log_path})", self.log_path)
            time.sleep(0.2)
        reader.join(30)
        proc.stdout.close()
        self.note(f"{what}: exit {proc.returncode}")
        if proc.returncode != 0:
            last = next((ln for ln in lines if ln.strip().startswith("ERROR")), lines[-1] if lines else "")
            raise DependencyError(f"{what} failed (exit {proc.returncode}: {last.strip()[:300]}); the full log is "
                                  f"{self.log_path}", self.log_path)
        self.progress(end, what)
        return "\n".join(lines)


def runs(python: Path) -> bool:
    try:
        return subprocess.run([str(python), "-c", "pass"], capture_output=True, timeout=60,
                              env=child_env()).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def make_venv(runner: Runner, python: str, venv: Path) -> None:
    try:
        runner.run([python, "-m", "venv", "--system-site-packages", venv], "creating the environment", 2, 8)
        return
    except DependencyError:
        if not any("ensurepip" in ln for ln in tail(runner.log_path)):
            raise
    # Debian without python3-venv: no ensurepip; a pip of QGIS's Python still works from inside the venv.
    shutil.rmtree(venv, ignore_errors=True)
    runner.run([python, "-m", "venv", "--system-site-packages", "--without-pip", venv],
               "creating the environment (without its own pip)", 2, 6)
    if not runs_pip(venv_python(venv)):
        raise DependencyError("QGIS's Python can make no environment with pip (no ensurepip, no pip): install "
                              "python3-venv (Debian/Ubuntu: sudo apt install python3-venv), then Retry "
                              f"(log: {runner.log_path})", runner.log_path)


def runs_pip(python: Path) -> bool:
    try:
        return subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True, timeout=120,
                              env=child_env()).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def tail(path: Path, n: int = 40) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:]
    except OSError:
        return []
