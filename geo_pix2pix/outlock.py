"""One writer per output: an exclusive lock on ``.NAME.lock`` beside DST while it is made.

Two renders to the same new DST would both find it missing, both render, and the
second rename would silently replace the first. The lock is the one ``tiles`` holds on
its DEST (:class:`geo_pix2pix.tiles.manifest.DestinationLock`): a non-blocking ``flock``
that the kernel drops when its holder dies, even by ``kill -9``, so a stale lock file
never blocks a later run. The file is removed while still held when the run ends; a
process that opened it just before sees, once it holds its lock, that the path now
names another file (or none) and tries again.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DestinationBusyError

__all__ = ["OutputLock", "lock_path"]


def lock_path(dst: str | os.PathLike) -> Path:
    dst = Path(dst)
    return dst.parent / f".{dst.name}.lock"


class OutputLock:
    """Context manager: hold the lock of output ``dst`` or raise :class:`DestinationBusyError`."""

    def __init__(self, dst: str | os.PathLike) -> None:
        self.dst, self.path, self.fd = Path(dst), lock_path(dst), None

    def __enter__(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no flock; renders are not serialised
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise DestinationBusyError(
                    f"output {str(self.dst)!r} is being written by another geo-pix2pix process (pid {holder}, "
                    f"lock {str(self.path)!r}): wait for it to finish, or choose another output path") from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder finished and removed it between our open and our lock
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
