"""Device choice: ``auto`` picks CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import functools
import platform

import torch

from ..errors import DeviceError
from .choices import DEVICE_CHOICES

__all__ = ["DEVICE_CHOICES", "autocast", "autocast_dtype", "busy_cores", "cpu_bf16_kind", "cpu_description",
           "cpu_flags", "cpu_has_native_bf16", "cpu_times", "free_cpu_threads", "resolve_device"]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn ``None``/``"auto"``/``"cpu"``/``"cuda[:N]"``/``"mps"`` into a usable device.

    An explicit accelerator that is not there is an error, not a silent fallback: a
    user who asked for the GPU should know they are not getting it.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    name = device.split(":")[0]
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} was asked for but this PyTorch sees no CUDA GPU "
                f"(torch {torch.__version__}): use --device cpu or --device auto"
            )
        return torch.device(device)
    if name == "mps":
        if not _mps_available():
            raise DeviceError(f"device {device!r} was asked for but MPS is not available: use --device cpu or auto")
        return torch.device("mps")
    raise DeviceError(f"device {device!r} is not one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (``avx2``, ``avx512_bf16``, ``amx_bf16``, …),
    read once; empty where ``/proc/cpuinfo`` is not there (see :func:`cpu_bf16_kind`)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_description() -> str:
    """The CPU's model name and the flags that decide the engine, for benchmark output."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
    flags = cpu_flags()
    shown = [f for f in wanted if f in flags] if flags else [f"bfloat16: {cpu_bf16_kind() or 'emulated'}"]
    return f"{name} ({', '.join(shown)})"


@functools.cache
def cpu_bf16_kind() -> str | None:
    """How this CPU multiplies bfloat16, read once: ``"amx"`` (AMX-BF16 tiles, recent Xeons),
    ``"avx512_bf16"`` (AVX512-BF16 dot products, recent AMD and Intel server CPUs), or None
    (AVX2 and others: oneDNN emulates bfloat16, more slowly than float32). None too where
    PyTorch has no oneDNN. The engine picks its layout by it
    (:func:`engine.bfloat16_engine`); figures per CPU in ``docs/performance.md``."""
    if not torch.backends.mkldnn.is_available():
        return None
    flags = cpu_flags()
    if flags:
        amx, avx512 = {"amx_tile", "amx_bf16"} <= flags, "avx512_bf16" in flags
    else:  # not Linux: ask PyTorch's own CPU detection
        amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
        avx512 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    return "amx" if amx else "avx512_bf16" if avx512 else None


def free_cpu_threads(cpus: int | None = None, busy: float | None = None) -> int:
    """CPU threads for the model: the cores this process may use, less those other processes
    keep busy now (:func:`busy_cores`), at least one. oneDNN's parallel regions wait for
    their slowest thread, so a thread that shares its core with another job slows all of
    them (``docs/performance.md``, "A busy machine")."""
    import os

    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if busy is None:
        busy = busy_cores()
    return max(1, min(cpus, cpus - round(busy)))


#: /proc/stat's per-CPU columns that count as busy: user, system, irq, softirq, steal.
#: Not nice (niced work yields its core to the model), idle or iowait.
_BUSY_COLUMNS = (0, 2, 5, 6, 7)


def cpu_times(stat: str, cpus: set[int] | None = None) -> tuple[int, int]:
    """(busy, total) clock ticks of ``cpus`` (all where None) in a /proc/stat text."""
    busy = total = 0
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()) or (cpus is not None and int(name[3:]) not in cpus):
            continue
        ticks = [int(v) for v in rest.split()[:8]]
        busy += sum(ticks[i] for i in _BUSY_COLUMNS if i < len(ticks))
        total += sum(ticks)
    return busy, total


def busy_cores(interval: float = 0.2) -> float:
    """How many of this process's cores other processes keep busy now, at normal priority.

    Measured from /proc/stat over ``interval`` seconds, less this process's own CPU time:
    what is running when the command starts, not the 1-minute load average, which still
    counts a job that ended seconds ago (and its own previous run) and counts niced work
    that would give way. Where there is no /proc/stat, the load average; else 0.
    """
    import os
    import time

    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        with open("/proc/stat") as f:
            b0, t0 = cpu_times(f.read(), cpus)
        own0 = time.process_time()
        time.sleep(interval)
        with open("/proc/stat") as f:
            b1, t1 = cpu_times(f.read(), cpus)
        own = time.process_time() - own0
    except (OSError, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    n = len(cpus) if cpus else (os.cpu_count() or 1)
    if t1 <= t0:
        return 0.0
    return max(0.0, (b1 - b0) / (t1 - t0) * n - own / interval)


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (:func:`cpu_bf16_kind`: AVX512-BF16
    or AMX) and PyTorch has oneDNN: there bfloat16 convolutions run at twice the float32
    rate or more (``benchmarks/train_throughput.py``, ``docs/performance.md``). Elsewhere
    oneDNN emulates bfloat16, more slowly than float32."""
    return cpu_bf16_kind() is not None


def autocast_dtype(device: torch.device, enabled: bool = True, *, cpu_bf16: bool = False) -> torch.dtype | None:
    """The lower precision :func:`autocast` runs in on ``device``, or None for float32.

    CUDA: float16. CPU: bfloat16 only when ``cpu_bf16`` is asked for (training does;
    inference does not, so that a render's pixels do not depend on the CPU it ran on)
    and :func:`cpu_has_native_bf16`. MPS: None.
    """
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool = True, *, cpu_bf16: bool = False):
    """Mixed precision where it pays (see :func:`autocast_dtype`); a no-op elsewhere.

    Autocast runs convolutions and matrix products in the lower precision; the layers
    after them (norms, activations) then see lower-precision tensors too (PyTorch
    accumulates norm statistics in float32), while losses, weights, gradients and the
    optimiser stay float32. Where it is off on CUDA or the CPU, it is switched off for
    that device, also inside a caller's autocast.
    """
    dtype = autocast_dtype(device, enabled, cpu_bf16=cpu_bf16)
    kind = device.type if device.type in ("cpu", "cuda") else "cpu"
    return torch.autocast(device_type=kind, dtype=dtype or (torch.float16 if kind == "cuda" else torch.bfloat16),
                          enabled=dtype is not None)
