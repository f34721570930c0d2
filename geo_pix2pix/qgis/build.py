"""The plugin zip for *Plugins ▸ Install from ZIP* and the QGIS plugin repository.

:func:`build_plugin` zips ``plugin/`` as ``geo_pix2pix_plugin/…`` (what the plugin
manager unzips into ``<profile>/python/plugins``): Python sources, metadata, icon and
licence; no model weights and no wheels (the plugin installs geo-pix2pix, which carries
its default model, on first use). :func:`check_plugin_zip` applies the plugin
repository's upload rules (its validator: required metadata keys, one top folder with
``__init__.py`` and ``LICENSE``, no ``.pyc``/``__pycache__``/``.git``, under 25 MB) and
ours (version formats, no binaries). No QGIS module is imported here.
"""

from __future__ import annotations

import configparser
import io
import os
import re
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..errors import GeoPix2PixError, OutputExistsError
from .install import PLUGIN_NAME, plugin_files

__all__ = ["MAX_SIZE", "BuildResult", "PluginCheckError", "build_plugin", "check_plugin_zip"]

#: The plugin repository's upload limit (bytes).
MAX_SIZE = 25_000_000
#: Keys the plugin repository refuses an upload without.
REQUIRED = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about", "tracker",
            "repository")
#: What the zip may hold: sources and text, images. Anything else counts as a binary.
ALLOWED_SUFFIXES = {".py", ".txt", ".md", ".png", ".svg", ".ui", ".qml", ""}
#: Magic numbers of executables and compiled modules (ELF, PE, Mach-O, Python byte-code is caught by name).
BINARY_MAGIC = (b"\x7fELF", b"MZ", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe", b"PK\x03\x04")
VERSION = re.compile(r"^\d+\.\d+(\.\d+)?([.-]?(a|b|rc|alpha|beta|dev)\d*)?$")
QGIS_VERSION = re.compile(r"^3\.\d+(\.\d+)?$")
URL = re.compile(r"^https?://[^/\s]+\.[^/\s]+(/\S*)?$")
#: Fixed timestamp: the same sources give the same zip, byte for byte.
ZIP_DATE = (2024, 1, 1, 0, 0, 0)


class PluginCheckError(GeoPix2PixError, ValueError):
    """The zip breaks a rule of the QGIS plugin repository."""


@dataclass(frozen=True)
class BuildResult:
    path: Path
    size: int  # bytes
    files: tuple[str, ...]  # names inside the zip
    version: str


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(f"{PLUGIN_NAME}/{name}", ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[name])
    return buf.getvalue()


def build_plugin(out: str | os.PathLike = "geo_pix2pix_plugin.zip", overwrite: bool = False) -> BuildResult:
    """Write the plugin zip to ``out`` (checked by :func:`check_plugin_zip` before it is kept)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{str(out)!r} exists: pass --overwrite to replace it")
    files = plugin_files()
    data = _zip_bytes(files)
    meta = check_plugin_zip(io.BytesIO(data), size=len(data))
    if meta["version"] != __version__:  # the plugin installs geo-pix2pix==<its version>
        raise PluginCheckError(f"plugin/metadata.txt has version={meta['version']} but geo-pix2pix is {__version__}: "
                               f"set version={__version__} there")
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return BuildResult(out, len(data), tuple(f"{PLUGIN_NAME}/{n}" for n in sorted(files)), __version__)


def check_plugin_zip(path, size: int | None = None) -> dict[str, str]:
    """Check a plugin zip as the plugin repository does; return its metadata, or raise PluginCheckError."""
    name = getattr(path, "name", None) or "the zip"
    if size is None:
        size = os.path.getsize(path)
    if size > MAX_SIZE:
        raise PluginCheckError(f"{name} is {size / 1e6:.1f} MB; the plugin repository takes at most "
                               f"{MAX_SIZE / 1e6:.0f} MB: leave model weights and wheels out")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise PluginCheckError(f"{name} is not a zip file ({exc}): build it with geo-pix2pix qgis "
                               "build-plugin") from exc
    with zf:
        names = zf.namelist()
        for n in names:
            parts = n.split("/")
            if ".." in parts or n.startswith("/"):
                raise PluginCheckError(f"{n!r} in {name} has a path outside the plugin folder: remove it")
            if n.endswith(".pyc") or {"__pycache__", ".git", "__MACOSX"} & set(parts):
                raise PluginCheckError(f"{n!r} in {name}: the plugin repository refuses .pyc, __pycache__, .git "
                                       "and __MACOSX entries: remove it")
        tops = {n.split("/")[0] for n in names}
        if len(tops) != 1 or not re.match(r"^[A-Za-z][A-Za-z0-9-_]+$", next(iter(tops), "")):
            raise PluginCheckError(f"{name} has top-level entries {sorted(tops)}; it must hold exactly one folder "
                                   "named with ASCII letters, digits, '-' and '_'")
        top = tops.pop()
        for needed in ("__init__.py", "metadata.txt", "LICENSE"):
            if f"{top}/{needed}" not in names:
                raise PluginCheckError(f"{name} lacks {top}/{needed}, which the plugin repository requires")
        for n in names:
            if n.endswith("/"):
                continue
            suffix = Path(n).suffix.lower()
            head = zf.read(n)[:4]
            if suffix not in ALLOWED_SUFFIXES or (suffix != ".png" and head.startswith(BINARY_MAGIC)):
                raise PluginCheckError(f"{n!r} in {name} is a binary or an archive ({suffix or 'no suffix'}): "
                                       "the plugin holds sources, text and images only")
        bad = zf.testzip()
        if bad:
            raise PluginCheckError(f"{bad!r} in {name} is corrupt (CRC error): build the zip again")
        meta = configparser.ConfigParser(interpolation=None)
        meta.optionxform = str  # keys are case-sensitive (qgisMinimumVersion)
        try:
            meta.read_string(zf.read(f"{top}/metadata.txt").decode("utf-8"))
            general = dict(meta["general"])
        except (configparser.Error, KeyError, UnicodeDecodeError) as exc:
            raise PluginCheckError(f"{top}/metadata.txt in {name} cannot be read as [general] key=value "
                                   f"lines: {exc}") from exc
        missing = [k for k in REQUIRED if k not in general]
        if missing:
            raise PluginCheckError(f"{top}/metadata.txt lacks {', '.join(missing)}: the plugin repository requires "
                                   f"{', '.join(REQUIRED)}")
        for key, rule in (("version", VERSION), ("qgisMinimumVersion", QGIS_VERSION)):
            if not rule.match(general[key].strip()):
                raise PluginCheckError(f"{key}={general[key]!r} in {top}/metadata.txt is not a version like "
                                       f"{'0.1.0' if key == 'version' else '3.22'}: fix it")
        for key in ("repository", "tracker", "homepage"):
            if key in general and not URL.match(general[key].strip()):
                raise PluginCheckError(f"{key}={general[key]!r} in {top}/metadata.txt is not an http(s) URL")
        if "/" in general["author"]:
            raise PluginCheckError(f"author={general['author']!r}: the plugin repository refuses slashes in it")
        icon = general.get("icon", "").removeprefix("./")
        if not icon or f"{top}/{icon}" not in names:
            raise PluginCheckError(f"icon={icon!r} in {top}/metadata.txt names no file of the zip: add the icon")
    return general
