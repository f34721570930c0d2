"""Keep freed memory in the process while the model runs (glibc only).

Large blocks are otherwise served by ``mmap`` and unmapped when freed, so every batch
faults in (and the kernel zeroes) fresh pages; docs/performance.md has the figures.
The settings are the whole process's: only the CLI enters :func:`kept_heap` (and
worker processes geo-pix2pix starts itself), never a library call.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["keep_heap_for_process", "kept_heap", "set_process_thresholds"]

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
# Set on leaving: what the environment asked for (MALLOC_*_, e.g. Dask's nanny), else where
# glibc's adaptive rule ends up after large blocks; setting any threshold turns that rule
# off for good, and its initial 128 KiB would make every later large block a fresh mapping.
_DEFAULT_MMAP_MAX = 65536
_LEFT_MMAP_THRESHOLD = 32 << 20
_LEFT_TRIM_THRESHOLD = 64 << 20


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


#: the settings restored when the last user of kept_heap leaves (set_process_thresholds)
_left = {_M_MMAP_MAX: _env_int("MALLOC_MMAP_MAX_", _DEFAULT_MMAP_MAX),
         _M_MMAP_THRESHOLD: _env_int("MALLOC_MMAP_THRESHOLD_", _LEFT_MMAP_THRESHOLD),
         _M_TRIM_THRESHOLD: _env_int("MALLOC_TRIM_THRESHOLD_", _LEFT_TRIM_THRESHOLD)}

_lock = threading.Lock()
_users = 0


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def _acquire() -> None:
    global _users
    with _lock:
        if _users == 0:
            _LIBC.mallopt(_M_MMAP_MAX, 0)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, 1 << 30)  # int: at most 1 GiB kept free at the top
            log.debug("glibc malloc: freed memory kept in the heap (M_MMAP_MAX=0, 1 GiB trim threshold)")
        _users += 1


def _release() -> None:
    global _users
    with _lock:
        _users -= 1
        if _users == 0:
            for param, value in _left.items():
                _LIBC.mallopt(param, value)
            _LIBC.malloc_trim(0)
            log.debug("glibc malloc: settings restored, free memory handed back")


@contextmanager
def kept_heap() -> Iterator[None]:
    """Serve large blocks from the heap and keep freed memory until the block ends; nested
    and concurrent uses share one setting, restored when the last one leaves."""
    if _LIBC is None:
        yield
        return
    _acquire()
    try:
        yield
    finally:
        _release()


def set_process_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's mmap and trim thresholds for this process (now, or when the running
    :func:`kept_heap` users leave); False where there is no glibc."""
    if _LIBC is None:
        return False
    with _lock:
        _left[_M_MMAP_THRESHOLD], _left[_M_TRIM_THRESHOLD] = mmap_threshold, trim_threshold
        if _users == 0:
            return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
                        and _LIBC.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return True


def keep_heap_for_process() -> None:
    """:func:`kept_heap` for the rest of this process: for the worker processes
    geo-pix2pix starts itself (``tiles --workers``), which do nothing else."""
    if _LIBC is not None:
        _acquire()
