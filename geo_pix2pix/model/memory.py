"""How much memory a run will need, known before anything large is allocated.

A network's size comes from its config alone: it is built on PyTorch's ``meta`` device
(shapes, no storage), so a checkpoint or an option that asks for an enormous network
is measured, and refused, at no cost. The batch's need is a lower bound (the tensors a
step cannot do without), compared with what the machine has available: a run that
cannot fit is refused at once, with both numbers, instead of swapping or being killed
hours later.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from ..errors import OptionError

__all__ = ["available_memory", "check_memory", "format_bytes", "layer_outputs", "meta_module",
           "render_batch_bytes", "train_bytes"]

#: Adam keeps two moments; with the weights and their gradients: four float32 per parameter.
TRAIN_BYTES_PER_PARAMETER = 16


def available_memory(device: torch.device | None = None) -> int | None:
    """Bytes that can be allocated now on ``device`` (default: main memory); None if unknown."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device is not None and device.type != "cpu":
        return None  # MPS shares main memory but does not say how much it may take
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_memory(need: int, what: str, fix: str, device: torch.device | None = None) -> None:
    """Raise :class:`OptionError` when ``need`` bytes exceed what ``device`` has available."""
    have = available_memory(device)
    if have is not None and need > have:
        where = "GPU memory" if device is not None and device.type == "cuda" else "memory"
        raise OptionError(f"{what} needs at least {format_bytes(need)} of {where}, but "
                          f"{format_bytes(have)} is available: {fix}")


def meta_module(factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` built on the meta device: its parameters have shapes but no storage."""
    with torch.device("meta"):
        return factory()


def layer_outputs(module: nn.Module, *inputs: torch.Tensor, **kwargs) -> int:
    """Elements of every leaf module's output in one forward pass ``module(*inputs, **kwargs)``
    (on ``meta`` inputs: shapes only): what a backward pass keeps, at the least."""
    total = 0

    def count(_m, _i, out) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    hooks = [m.register_forward_hook(count) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            module(*inputs, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return total


def render_batch_bytes(batch_size: int, tile_size: int) -> int:
    """Bytes a render holds per model call, beyond the model: the batch's uint8 tiles and
    their float32 outputs (as computed, and once more as collected)."""
    return batch_size * 3 * tile_size * tile_size * (1 + 2 * 4)


def train_bytes(generator: nn.Module, discriminator: nn.Module, batch_size: int, crop_size: int,
                load_size: int) -> int:
    """A lower bound of a training step's memory: weights, gradients and Adam's moments
    of both (meta) networks, and per sample the loaded pair, the crops and the layer
    outputs of G and D that the backward pass keeps."""
    params = sum(p.numel() for net in (generator, discriminator) for p in net.parameters())
    x = torch.empty(1, generator.config.in_channels, crop_size, crop_size, device="meta")
    y = torch.empty(1, generator.config.out_channels, crop_size, crop_size, device="meta")
    # scales=True: every PatchGAN of a multi-scale discriminator, as the training step runs them
    per_sample = layer_outputs(generator, x) + layer_outputs(discriminator, x, y, scales=True)
    per_sample += 6 * load_size * load_size + 6 * crop_size * crop_size  # the resized pair, the crops
    return TRAIN_BYTES_PER_PARAMETER * params + 4 * batch_size * per_sample
