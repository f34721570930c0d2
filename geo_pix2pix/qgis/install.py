"""Installing the QGIS plugin into a QGIS profile (``geo-pix2pix qgis install-plugin``).

The plugin (``plugin/`` beside this module: ``metadata.txt``, ``classFactory``, the
provider registered in ``initProcessing``) is copied to
``<profile>/python/plugins/geo_pix2pix_plugin``. It holds no geo-pix2pix code: it
imports the installed package. So that QGIS finds the package even when it lives in
a virtual environment QGIS's Python does not know, the copy records where this Python
finds it (``install.json``); the plugin adds those folders to ``sys.path`` when the
plain import fails and the Python versions agree. No QGIS module is imported here.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import sys
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .._version import __version__
from ..errors import OutputExistsError, OutputPathError

__all__ = ["PLUGIN_NAME", "InstallResult", "default_profile_dir", "install_plugin", "plugin_files"]

#: The plugin's folder name under ``python/plugins`` (a Python package name: no dashes).
PLUGIN_NAME = "geo_pix2pix_plugin"
PLUGIN_FILES = ("metadata.txt", "__init__.py", "plugin.py", "deps.py", "pipenv.py", "dialog.py", "icon.png", "LICENSE")
RECORD = "install.json"


@dataclass(frozen=True)
class InstallResult:
    path: Path  # the plugin's folder in the profile
    replaced: bool  # an earlier geo-pix2pix plugin was there
    site_dirs: tuple[str, ...]  # folders recorded for the plugin to find geo_pix2pix


def default_profile_dir() -> Path:
    """QGIS's default profile folder on this OS (``QGIS_CUSTOM_CONFIG_PATH`` first, as QGIS does)."""
    custom = os.environ.get("QGIS_CUSTOM_CONFIG_PATH")
    if custom:
        return Path(custom) / "profiles" / "default"
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "QGIS" / "QGIS3" / "profiles" / "default"


def plugin_files() -> dict[str, bytes]:
    """The plugin's files, from the installed package."""
    folder = resources.files(__package__) / "plugin"
    return {name: (folder / name).read_bytes() for name in PLUGIN_FILES}


def _site_dirs() -> tuple[str, ...]:
    """Folders on this Python's path that hold geo_pix2pix (directly or through a .pth)."""
    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding geo_pix2pix/
    if not any(Path(d, "geo_pix2pix").is_dir() for d in dirs):
        dirs.append(package_root)  # an editable install or a source checkout
    seen: list[str] = []
    for d in dirs:
        if os.path.isdir(d) and d not in seen:
            seen.append(d)
    return tuple(seen)


def _is_ours(folder: Path) -> bool:
    meta = folder / "metadata.txt"
    try:
        return "name=geo-pix2pix" in meta.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def install_plugin(profile_dir: str | os.PathLike | None = None, overwrite: bool = False) -> InstallResult:
    """Copy the plugin into the QGIS profile ``profile_dir`` (default: :func:`default_profile_dir`).

    An earlier geo-pix2pix plugin there is replaced; another folder of the same name
    only with ``overwrite``. The profile folder must exist (QGIS makes it on first start).
    """
    profile = Path(profile_dir) if profile_dir is not None else default_profile_dir()
    if not profile.is_dir():
        how = "pass --profile-dir" if profile_dir is None else "check the path"
        raise OutputPathError(f"QGIS profile folder {str(profile)!r} does not exist: start QGIS once to "
                              f"create it, or {how} (QGIS shows it under Settings ▸ User Profiles ▸ "
                              "Open Active Profile Folder)")
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    dest = plugins / PLUGIN_NAME
    replaced = dest.exists()
    if replaced and not _is_ours(dest) and not overwrite:
        raise OutputExistsError(f"{str(dest)!r} exists and is not a geo-pix2pix plugin: pass --overwrite "
                                "to replace it")
    dirs = _site_dirs()
    record = {"geo_pix2pix": __version__, "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
              "executable": sys.executable, "site_dirs": list(dirs)}
    staging = plugins / f".{PLUGIN_NAME}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        staging.mkdir()
        for name, data in plugin_files().items():
            (staging / name).write_bytes(data)
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if replaced:
            shutil.rmtree(dest)
        os.replace(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return InstallResult(dest, replaced, dirs)
