"""Device choice: ``auto`` picks CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import torch

from .errors import DeviceError

__all__ = ["DEVICE_CHOICES", "autocast", "resolve_device"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


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


def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision on CUDA (float16); a no-op context elsewhere.

    On the CPU, bfloat16 autocast is slower than float32 for these convolutions on
    CPUs without AMX and changes results, so it is not used.
    """
    return torch.autocast(device_type="cuda", dtype=torch.float16,
                          enabled=enabled and device.type == "cuda")
