"""Writing files atomically: temporary files named after their owner, the sweep that
removes the stale ones, flushing, and replacing a file by a rename.

Every temporary file geo-pix2pix writes beside an output (``render``'s
``.NAME.*.tmp*`` beside DST, ``tiles``' ``.NAME.pmtiles.*.tmp`` beside a PMTiles
archive, the temporary tiles of an XYZ folder) is named by :func:`temp_name`::

    .NAME[.TAG].pid<PID>-<HOST>.<8 hex>.tmp[SUFFIX]

where PID and HOST are those of the process writing it. A run normally removes its own
temporaries, even after Ctrl-C or SIGTERM; only ``kill -9``, a crash or a power cut
leaves them. :func:`sweep_stale`, called at the start of the next run that writes the
same output, removes those whose owner is gone: same host and no process with that PID.
A temporary of another host (a shared file system) or of a live process is left alone,
as is every file that does not match the pattern exactly.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["SIDECAR_SUFFIXES", "fsync", "host_tag", "owner_alive", "replacing", "scratch_path", "sidecars",
           "sweep_stale", "temp_name", "temp_path"]

log = logging.getLogger(__name__)

_TEMP_RE = re.compile(r"^(?:(?P<tag>[A-Za-z0-9_-]+)\.)?pid(?P<pid>\d+)-(?P<host>[A-Za-z0-9_-]+)"
                      r"\.[0-9a-f]{8}\.tmp(?P<suffix>.*)$")


def host_tag() -> str:
    """This machine's name, reduced to the characters a temporary file's name carries."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"
    return name[:32]


def temp_name(name: str, tag: str | None = None, suffix: str = "") -> str:
    """``.NAME[.TAG].pid<PID>-<HOST>.<random>.tmp[SUFFIX]``: a hidden temporary name for
    the file ``NAME``, owned by this process."""
    if tag is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", tag):
        raise ValueError(f"temporary tag {tag!r}: letters, digits, '_' and '-' only")
    middle = f"{tag}." if tag else ""
    return f".{name}.{middle}pid{os.getpid()}-{host_tag()}.{uuid.uuid4().hex[:8]}.tmp{suffix}"


def temp_path(dst: str | os.PathLike, tag: str | None = None, suffix: str = "") -> Path:
    """A temporary path beside ``dst`` (same folder, so that a rename is atomic)."""
    dst = Path(dst)
    return dst.parent / temp_name(dst.name, tag, suffix)


def owner_alive(pid: int, host: str) -> bool:
    """Whether the process that owns a temporary may still be writing it: True for
    another host (it cannot be checked from here), for this process, and for any live
    process with that PID."""
    if host != host_tag() or pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:  # EPERM: alive, another user's
        return exc.errno != errno.ESRCH
    return True


def sweep_stale(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the stale temporaries in ``folder`` (of the file ``name`` only, if given):
    names made by :func:`temp_name` whose owner is gone. Returns what was removed.

    Never raises for a file it cannot remove or a folder it cannot list: a sweep only
    tidies up, it must not stop the run that calls it.
    """
    folder = Path(folder) if str(folder) else Path(".")
    prefix = "." if name is None else f".{name}."
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        rest = entry.name[len(prefix):]
        if name is None:  # ".NAME.[TAG.]pid…": find where the owner part starts
            m = re.search(r"\.(?:[A-Za-z0-9_-]+\.)?pid\d+-[A-Za-z0-9_-]+\.[0-9a-f]{8}\.tmp", entry.name)
            rest = entry.name[m.start() + 1:] if m else ""
        m = _TEMP_RE.match(rest)
        if m is None or owner_alive(int(m["pid"]), m["host"]):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                continue  # temporaries are files; a folder of that name is not ours to remove
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    if removed:
        log.info("removed %d stale temporary file(s) left by an interrupted run in %s: %s", len(removed),
                 folder, ", ".join(p.name for p in removed[:5]) + (" …" if len(removed) > 5 else ""))
    return removed


def fsync(path: str | os.PathLike, *, folder: bool = False) -> None:
    """Flush a file to disk; ``folder=True``: a folder's entries (after a rename), where
    the file system can (some cannot fsync a folder: the rename is done either way)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


#: GDAL's side files named ``NAME`` + suffix: georeference, nodata and metadata (PAM),
#: external overviews, external mask.
SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk")


def sidecars(path: str | os.PathLike) -> list[Path]:
    """The side files GDAL reads as part of the raster ``path``: :data:`SIDECAR_SUFFIXES`
    and the world files (``NAME.wld``, ``.pgw``/``.pngw`` for ``.png``, ``.tfw``/``.tifw``
    for ``.tif``…), which take precedence over a PNG's or JPEG's ``.aux.xml``."""
    path = Path(path)
    out = [Path(str(path) + s) for s in SIDECAR_SUFFIXES]
    ext = path.suffix[1:]
    if ext:
        stem = path.with_suffix("")
        names = {f"{ext[0]}{ext[-1]}w", f"{ext}w", "wld"}
        out += [Path(f"{stem}.{n}") for n in sorted(names)]
    return out


def _with_side_files(path: Path) -> list[Path]:
    return [path, *(Path(str(path) + s) for s in SIDECAR_SUFFIXES)]


@contextmanager
def scratch_path(dst: str | os.PathLike, tag: str, suffix: str = ".tif") -> Iterator[Path]:
    """Yield a hidden temporary path beside ``dst``, removed with its side files on exit."""
    tmp = temp_path(dst, tag, suffix)
    try:
        yield tmp
    finally:
        for p in _with_side_files(tmp):
            p.unlink(missing_ok=True)


def _publish(tmp: Path, dst: Path) -> None:
    """Rename ``tmp`` onto ``dst`` with its side files; ``dst``'s old side files go.

    Two renames cannot be one atomic step; the order makes sure no moment shows an
    image with another image's side files: old side files, then the image, then its own.
    """
    for old in sidecars(dst):
        if os.path.lexists(old):
            old.unlink()
    os.replace(tmp, dst)
    for new, target in zip(_with_side_files(tmp)[1:], _with_side_files(dst)[1:], strict=True):
        if new.exists():
            os.replace(new, target)


@contextmanager
def replacing(dst: str | os.PathLike, tag: str | None = None, suffix: str = "", *,
              check: Callable[[Path], None] | None = None, side_files: bool = False,
              flush_failure: Callable[[OSError], BaseException] | None = None) -> Iterator[Path]:
    """Write ``dst`` atomically: yield a temporary path beside it; when the block ends
    normally, ``check`` it, flush it to disk and rename it onto ``dst``; when the block
    raises (Ctrl-C included), remove it and leave ``dst`` as it was. Stale temporaries of
    ``dst`` left by a killed run are swept first.

    ``side_files``: a raster's GDAL side files go with it (:func:`sidecars`; ``dst``'s old
    ones are removed), and the file keeps the mode GDAL gave it. ``flush_failure`` turns
    an error of the flush (a network file system may report a full disk only then) into
    the exception raised instead.
    """
    dst = Path(dst)
    sweep_stale(dst.parent, dst.name)
    tmp = temp_path(dst, tag, suffix)
    written = _with_side_files(tmp) if side_files else [tmp]
    try:
        yield tmp
        if check is not None:
            check(tmp)
        try:
            if not side_files:
                os.chmod(tmp, 0o644)  # an ordinary file, whatever made the temporary
            for p in written:
                if p.exists():
                    fsync(p)  # so that a power cut after the rename cannot leave a damaged dst
        except OSError as exc:
            if flush_failure is None:
                raise
            raise flush_failure(exc) from None
        if side_files:
            _publish(tmp, dst)
        else:
            os.replace(tmp, dst)
        fsync(dst.parent, folder=True)
    finally:
        for p in written:
            p.unlink(missing_ok=True)
