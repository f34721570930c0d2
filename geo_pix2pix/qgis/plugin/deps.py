"""The plugin's own Python environment: find, install, check, repair and remove it.

geo-pix2pix needs PyTorch, rasterio and its own package, which QGIS's Python lacks.
They go into a virtual environment owned by the plugin, inside the QGIS profile
(``<profile>/geo_pix2pix_plugin/venv``), built from QGIS's own Python with
``--system-site-packages``: pip then sees the distribution's packages (its numpy, which
QGIS's compiled modules were built against) and installs only what is missing; QGIS's
own site-packages are never written to. The plugin puts the environment's
site-packages on ``sys.path`` (:func:`activate`), so no restart is needed.

Headless, for scripts, ``qgis_process`` setups and tests::

    from geo_pix2pix_plugin import deps
    deps.status()              # Status(state='missing', ...)
    deps.install(cpu=True)     # the CPU build of torch; cpu=False: CUDA where nvidia-smi sees a GPU
    deps.repair()              # reinstall what is damaged, finish what was interrupted
    deps.uninstall()

Where packages come from (an environment variable wins over the QGIS setting
``geo_pix2pix_plugin/<name>``):

- ``GEO_PIX2PIX_SOURCE`` (setting ``source``): geo-pix2pix itself; empty: the requirement
  ``geo-pix2pix==<plugin version>`` from the package index; a ``.whl`` file; or a folder
  of wheels (pip's ``--find-links``), still pinned to the plugin's version;
- ``GEO_PIX2PIX_TORCH`` (setting ``torch``): the torch requirement, default ``torch``;
- ``GEO_PIX2PIX_TORCH_INDEX`` (setting ``torch_index``): the package index of the torch
  build; default PyTorch's CPU or CUDA index; ``none``: pip's own configuration.

This module imports nothing from QGIS at import time and never prints: it logs, and
reports progress through a callback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess  # noqa: F401 - tests replace subprocess.Popen through it
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import pipenv
from .pipenv import (
    ROOT_NAME,
    DependencyError,
    InstallCanceled,
    Progress,
    base_python,
    cuda_choice,
    environment_root,
    numpy_constraint,
    package_args,
    plugin_version,
    probe,
    setting,
    torch_args,
)

log = logging.getLogger(__name__)

__all__ = ["ROOT_NAME", "DependencyError", "InstallCanceled", "InstallResult", "Status", "activate", "base_python",
           "cuda_choice", "environment_root", "install", "numpy_constraint", "package_args", "plugin_version",
           "probe", "repair", "setting", "status", "torch_args", "uninstall"]

#: The environment's own tools, which may be loaded from the system's copies without harm.
_TOOLS = {"pip", "setuptools", "pkg_resources", "_distutils_hack", "wheel", "__pycache__"}
#: What geo-pix2pix and the provider import: all must import for the environment to count as working.
MODULES = ("numpy", "torch", "rasterio", "affine", "shapely", "skimage", "geo_pix2pix")


@dataclass(frozen=True)
class Status:
    #: ready | missing | incomplete (interrupted) | broken (files gone) | outdated (another version)
    state: str
    root: Path
    detail: str = ""
    damaged: tuple = ()  # distributions with files missing
    record: dict = field(default_factory=dict, compare=False)  # state.json of the last install

    @property
    def ready(self) -> bool:
        return self.state == "ready"


@dataclass(frozen=True)
class InstallResult:
    action: str  # "none" (already there), "install" or "repair"
    root: Path
    site_packages: Path | None
    torch: str  # "cpu" or a CUDA index name
    numpy: str  # the numpy constraint used ("" for none)
    log_path: Path
    seconds: float


# -- state of the environment ------------------------------------------------------------------

def _read_state(root: Path) -> dict:
    try:
        return json.loads((root / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _distributions(site: Path, files: bool = True) -> dict[str, dict]:
    """``{normalised name: {"version", "dist_info", "missing"}}`` of the distributions in ``site``;
    ``files``: look up every file their RECORD lists (else only that the RECORD is there)."""
    dists = {}
    for info in sorted(site.glob("*.dist-info")):
        name, _, rest = info.name[: -len(".dist-info")].partition("-")
        missing = []
        try:
            rows = (info / "RECORD").read_text(encoding="utf-8").splitlines()
        except OSError:
            rows, missing = [], ["RECORD"]
        for row in rows if files else ():
            rel = row.rsplit(",", 2)[0].strip('"')
            if not rel or rel.endswith(".pyc") or "__pycache__" in rel:
                continue  # byte-code is rebuilt on import
            if not (site / rel).exists():
                missing.append(rel)
        dists[re.sub(r"[-_.]+", "-", name).lower()] = {"version": rest, "dist_info": info.name, "missing": missing}
    return dists


def status(profile: os.PathLike | None = None, thorough: bool = True) -> Status:
    """Whether the plugin's environment is there, complete, intact and of this plugin's version.

    No import, no pip: ``thorough`` looks up (does not read) every file of every
    distribution; without it (QGIS's start-up) only the distributions are looked for.
    """
    root = environment_root(profile)
    venv = root / "venv"
    record = _read_state(root)
    if not venv.exists():
        return Status("missing", root, f"no environment at {venv}")
    if not record:
        return Status("incomplete", root, f"{venv} was not finished (an install was interrupted or failed): Repair")
    if record.get("plugin_version") != plugin_version():
        return Status("outdated", root, f"{venv} holds geo-pix2pix {record.get('plugin_version')}, this plugin is "
                      f"{plugin_version()}: Install", record=record)
    site = pipenv.site_packages(venv)
    if not pipenv.venv_python(venv).exists() or site is None:
        return Status("broken", root, f"{venv} has lost its Python: Repair", ("python",), record)
    dists = _distributions(site, files=thorough)
    damaged = sorted({name for name in record.get("distributions", {}) if name not in dists}
                     | {name for name, d in dists.items() if d["missing"]})
    if damaged:
        examples = "; ".join(f"{n}: {(dists[n]['missing'][:1] or ['?'])[0]}" if n in dists else f"{n}: not installed"
                             for n in damaged[:3])
        return Status("broken", root, f"{len(damaged)} package(s) of {venv} damaged ({examples}): Repair",
                      tuple(damaged), record)
    return Status("ready", root, f"geo-pix2pix {record.get('plugin_version')} with torch "
                  f"{record.get('torch_variant')} in {venv}", record=record)


# -- install, repair, uninstall ----------------------------------------------------------------

def install(cpu: bool | None = None, *, profile: os.PathLike | None = None, repair: bool = False,
            progress: Progress | None = None, is_canceled: Callable[[], bool] | None = None) -> InstallResult:
    """Make the plugin's environment ready; do nothing when it already is (and ``repair`` is off).

    ``cpu``: True for the CPU build of torch; False for the CUDA build (refused without
    a GPU that nvidia-smi reports); None: CUDA where there is one. ``progress(percent,
    message)`` and ``is_canceled()`` are called from this (the calling) thread.
    Raises :class:`DependencyError` (its ``log_path`` the full log) or :class:`InstallCanceled`.
    """
    t0 = time.monotonic()
    root = environment_root(profile)
    venv = root / "venv"
    current = status(profile)
    if current.ready and not repair:
        rec = current.record
        return InstallResult("none", root, pipenv.site_packages(venv), rec.get("torch_variant", "?"),
                             rec.get("numpy", ""), root / "install.log", time.monotonic() - t0)
    cuda = cuda_choice() if cpu is not True else None
    if cpu is False and cuda is None:
        raise DependencyError("the CUDA build of torch was asked for, but nvidia-smi reports no GPU here: install "
                              "the CPU build (cpu=True)")
    variant = cuda[0] if cuda else "cpu"
    version = plugin_version()
    pkg = package_args(version, setting("source"))  # a bad source is refused before anything changes
    python = base_python()
    facts = probe(python)
    numpy, why = numpy_constraint(facts)
    root.mkdir(parents=True, exist_ok=True)
    (root / "state.json").unlink(missing_ok=True)  # present only once everything below has worked
    runner = pipenv.Runner(root / "install.log", progress, is_canceled)
    action = "repair" if repair or current.state in ("incomplete", "broken") else "install"
    runner.note(f"{action} for geo-pix2pix plugin {version} in {venv} (was: {current.state}; {current.detail})")
    runner.note(f"QGIS's Python {python}: {facts}; {why}")
    constraints = root / "constraints.txt"
    constraints.write_text(f"{numpy}\n" if numpy else "", encoding="utf-8")

    venv_python = pipenv.venv_python(venv)
    if venv.exists() and (current.state == "broken" and "python" in current.damaged or not pipenv.runs(venv_python)):
        runner.note(f"{venv} has no working Python: made again")
        shutil.rmtree(venv)
    if not venv.exists():
        pipenv.make_venv(runner, python, venv)
    site = pipenv.site_packages(venv)
    if site is None:
        raise DependencyError(f"{venv} has no site-packages folder: Uninstall, then Install (log: {runner.log_path})",
                              runner.log_path)
    for leftover in site.glob("~*"):  # what an interrupted pip uninstall leaves behind
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
    pip = [venv_python, "-m", "pip", "install", "--no-input", "--progress-bar", "off", "-c", constraints]
    previous = _read_variant(current)
    if current.damaged and current.damaged != ("python",):
        _reinstall_damaged(runner, pip, site, current.damaged, pkg, variant)
    torch_more = ["--upgrade", "--force-reinstall"] if previous and previous != variant else []
    runner.run([*pip, *torch_more, *torch_args(variant)], f"installing torch ({variant})", 10, 55)
    runner.run([*pip, *pkg], f"installing geo-pix2pix {version} and its dependencies", 55, 90)
    versions = _verify(runner, venv_python, facts)
    dists = _distributions(site)
    state = {"plugin_version": version, "torch_variant": variant, "numpy": numpy, "numpy_reason": why,
             "python": python, "versions": versions, "installed": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "distributions": {n: d["version"] for n, d in dists.items()}}
    (root / "state.json").write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    runner.progress(100, "done")
    runner.note(f"{action} done: {versions}")
    return InstallResult(action, root, site, variant, numpy, runner.log_path, time.monotonic() - t0)


def repair(cpu: bool | None = None, **kwargs) -> InstallResult:
    """Reinstall the damaged packages, finish an interrupted install, check everything again."""
    return install(cpu, repair=True, **kwargs)


def uninstall(profile: os.PathLike | None = None) -> Path:
    """Remove the plugin's environment (and its logs); take it off ``sys.path``. Returns the folder removed.

    Modules already imported from it stay loaded until QGIS restarts.
    """
    root = environment_root(profile)
    site = pipenv.site_packages(root / "venv")
    if site is not None:
        sys.path[:] = [p for p in sys.path if not _inside(p, root)]
    if root.exists():
        shutil.rmtree(root)
    return root


def _inside(path: str, root: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(root.resolve())
    except (OSError, ValueError):
        return False


def _read_variant(current: Status) -> str:
    return current.record.get("torch_variant", "") if current.record else ""


def _reinstall_damaged(runner: pipenv.Runner, pip: list, site: Path, damaged: tuple, pkg: list, variant: str) -> None:
    """pip install --force-reinstall --no-deps of each damaged distribution, at its version."""
    dists = _distributions(site)
    pins = {n: f"{n}=={dists[n]['version']}" for n in damaged if n in dists}
    again = [*pip, "--force-reinstall", "--no-deps"]
    if "torch" in pins:
        runner.run([*again, *torch_args(variant)[1:], pins.pop("torch")], "reinstalling torch", 8, 10)
    if "geo-pix2pix" in pins:
        pins.pop("geo-pix2pix")
        runner.run([*again, *pkg], "reinstalling geo-pix2pix", 8, 10)
    if pins:
        runner.run([*again, *pins.values()], f"reinstalling {', '.join(pins)}", 8, 10)


_VERIFY = r"""
import json, sys
out = {}
for name in sys.argv[1].split(","):
    mod = __import__(name)
    out[name] = getattr(mod, "__version__", "?")
if sys.argv[2] == "1":
    from osgeo import gdal_array  # QGIS's GDAL with this environment's numpy: same ABI?
    out["osgeo"] = gdal_array.gdal.__version__
print(json.dumps(out))
"""


def _verify(runner: pipenv.Runner, python: Path, facts: dict) -> dict:
    out = runner.run([python, "-c", _VERIFY, ",".join(MODULES), "1" if facts.get("gdal_array") else "0"],
                     "checking the environment", 90, 99)
    return json.loads(out.strip().splitlines()[-1])


# -- using it in this process ------------------------------------------------------------------

def activate(profile: os.PathLike | None = None) -> tuple[bool, str]:
    """Put the ready environment's site-packages first on ``sys.path``.

    Returns ``(usable now, message)``: not usable without a restart when a module the
    environment provides was already imported from elsewhere (an older copy stays
    loaded in this process).
    """
    current = status(profile, thorough=False)
    if not current.ready:
        return False, current.detail
    site = pipenv.site_packages(current.root / "venv")
    if str(site) not in sys.path:
        import importlib
        import site as site_module

        before = list(sys.path)
        site_module.addsitedir(str(site))  # runs its .pth files too
        added = [p for p in sys.path if p not in before]
        sys.path[:] = added + [p for p in sys.path if p not in added]
        importlib.invalidate_caches()
    clashes = []
    for name in os.listdir(site):
        if name in _TOOLS or not name.isidentifier():
            continue
        mod = sys.modules.get(name)
        where = getattr(mod, "__file__", None) if mod is not None else None
        if where and not _inside(where, current.root):
            clashes.append(f"{name} ({where})")
    if clashes:
        return False, (f"restart QGIS to use geo-pix2pix: {', '.join(clashes[:3])} already loaded from outside "
                       f"{current.root}")
    return True, current.detail


def environment_report(profile: os.PathLike | None = None) -> dict:
    """The environment's state and last install, for a bug report."""
    current = status(profile)
    return {"state": current.state, "detail": current.detail, **asdict(current)["record"]}
