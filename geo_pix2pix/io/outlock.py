"""One writer per output: an exclusive lock while it is made (``.NAME.lock`` beside a
render's DST; ``lock`` in the work folder of a ``tiles`` or ``serve`` DEST).

Two renders to the same new DST would both find it missing, both render, and the
second rename would silently replace the first. The lock is a non-blocking ``flock``
that the kernel drops when its holder dies, even by ``kill -9``, so a stale lock file
never blocks a later run. The file is removed while still held when the run ends; a
process that opened it just before sees, once it holds its lock, that the path now
names another file (or none) and tries again.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DestinationBusyError

__all__ = ["OutputLock", "lock_path"]


def lock_path(dst: str | os.PathLike) -> Path:
    dst = Path(dst)
    return dst.parent / f".{dst.name}.lock"


class OutputLock:
    """Context manager: hold the lock of output ``dst`` or raise :class:`DestinationBusyError`.

    ``path`` is the lock file (default: :func:`lock_path`); ``name`` and ``alternative``
    word the message (``output``/``choose another output path``, or ``DEST`` for tiles).
    """

    def __init__(self, dst: str | os.PathLike, *, path: str | os.PathLike | None = None, name: str = "output",
                 alternative: str = "choose another output path") -> None:
        self.dst, self.fd = Path(dst), None
        self.path = Path(path) if path is not None else lock_path(dst)
        self.name, self.alternative = name, alternative

    def __enter__(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no flock; renders are not serialised
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise DestinationBusyError(
                    f"{self.name} {str(self.dst)!r} is being written by another geo-pix2pix process (pid {holder}, "
                    f"lock {str(self.path)!r}): wait for it to finish, or {self.alternative}") from None
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
