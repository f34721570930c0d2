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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["fsync", "host_tag", "owner_alive", "replacing", "sweep_stale", "temp_name", "temp_path"]

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


@contextmanager
def replacing(dst: str | os.PathLike, tag: str | None = None, suffix: str = "") -> Iterator[Path]:
    """Write a file atomically: yields a temporary path beside ``dst`` to write; flushes it
    and renames it onto ``dst`` when the block ends normally, removes it when the block raises (Ctrl-C
    included). Stale temporaries of ``dst`` left by a killed run are swept first."""
    dst = Path(dst)
    sweep_stale(dst.parent, dst.name)
    tmp = temp_path(dst, tag, suffix)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # an ordinary file, whatever made the temporary
        fsync(tmp)  # so that a power cut after the rename cannot leave a damaged dst
        os.replace(tmp, dst)
        fsync(dst.parent, folder=True)
    finally:
        tmp.unlink(missing_ok=True)
