"""The engine for CPUs with AMX: every layer channels-last.

oneDNN's AMX convolutions read and write NHWC tensors; :class:`engine.InferenceUNet`
leaves InstanceNorm models (the default model) in NCHW, so on AMX every convolution would
reorder its input and output on every call. :class:`ChannelsLastUNet` computes the same
function with every convolution channels-last (BatchNorm folded in, the activation applied
in place), InstanceNorm as one ``batch_norm`` per tile (:class:`TileNorm`), every decoder
layer as a parity-major sub-pixel convolution written straight into the skip connection's
buffer, and the head's tanh applied before its parities are interleaved into the float32
NCHW output. Chosen by :func:`devices.cpu_bf16_kind`; it runs on any CPU (the tests).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .engine import SubPixelDeconv, fold_batch_norm
from .networks import Generator, as_conv_transpose

__all__ = ["ChannelsLastUNet", "TileNorm", "interleave_into", "parity_major_conv"]

_CL = torch.channels_last


def parity_major_conv(deconv: nn.ConvTranspose2d) -> nn.Conv2d:
    """The 2 × 2 convolution of :class:`engine.SubPixelDeconv`, output channel ``p·C + c``
    holding parity ``p = 2a + b`` of channel ``c`` (there: ``4c + p``), so that each
    parity is a contiguous run of channels in a channels-last tensor."""
    conv = SubPixelDeconv(deconv).conv
    cout = conv.out_channels // 4
    order = torch.arange(4 * cout, device=conv.weight.device).view(cout, 4).t().reshape(-1)  # p·C + c ← 4c + p
    with torch.no_grad():
        conv.weight.copy_(conv.weight[order])
        conv.bias.copy_(conv.bias[order])
    return conv


def interleave_into(z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write the four parities of ``z`` (N, 4·C, H + 1, W + 1), parity-major (see
    :func:`parity_major_conv`), into ``out`` (N, C, 2H, 2W), any memory layout:
    ``out[n, c, 2i + a, 2j + b] = z[n, (2a + b)·C + c, i + a, j + b]``."""
    n, c4, h1, w1 = z.shape
    c, h, w = c4 // 4, h1 - 1, w1 - 1
    grid = out.unflatten(2, (h, 2)).unflatten(4, (w, 2))  # (N, C, H, 2, W, 2), a view
    for a in range(2):
        for b in range(2):
            p = 2 * a + b
            grid[:, :, :, a, :, b].copy_(z[:, p * c:(p + 1) * c, a:a + h, b:b + w])
    return out


class TileNorm(nn.Module):
    """``InstanceNorm2d`` (without running statistics) and the activation after it, on
    channels-last tensors: one ``batch_norm`` per tile, whose channels-last kernel keeps
    the layout and accumulates in float32; the activation writes where the result goes."""

    def __init__(self, norm: nn.InstanceNorm2d, slope: float) -> None:
        super().__init__()
        if norm.track_running_stats:
            raise ValueError(f"TileNorm normalises each tile by its own statistics; {norm} tracks running ones")
        affine = norm.weight is not None
        self.register_buffer("weight", norm.weight.detach().float().clone() if affine else None)
        self.register_buffer("bias", norm.bias.detach().float().clone() if affine else None)
        self.eps, self.slope = norm.eps, slope

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise ``x``, in place or into ``out`` (a view of a larger buffer)."""
        out = x if out is None else out
        for i in range(x.shape[0]):
            y = F.batch_norm(x[i:i + 1], None, None, self.weight, self.bias, True, 0.0, self.eps)
            if self.slope:
                torch.ops.aten.leaky_relu.out(y, self.slope, out=out[i:i + 1])
            else:
                torch.clamp_min(y, 0.0, out=out[i:i + 1])
        return out


class _Conv(nn.Module):
    """A channels-last convolution and the activation after it, in place."""

    def __init__(self, conv: nn.Conv2d, activation: str, slope: float = 0.0) -> None:
        super().__init__()
        self.conv = conv.to(memory_format=_CL)
        self.activation, self.slope = activation, slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.activation == "relu":
            return y.relu_()
        if self.activation == "leaky_relu":
            return F.leaky_relu_(y, self.slope)
        return y.tanh_() if self.activation == "tanh" else y


class _Down(nn.Module):
    """Encoder block: convolution → [InstanceNorm] → LeakyReLU."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module | None, slope: float, dtype: torch.dtype) -> None:
        super().__init__()
        fused = "none" if norm is not None else ("leaky_relu" if slope else "relu")
        self.conv = _Conv(conv.to(dtype), fused, slope)
        self.norm = TileNorm(norm, slope) if norm is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if self.norm is None else self.norm(y)


class _Up(nn.Module):
    """Decoder block: sub-pixel convolution → [InstanceNorm] → ReLU, written into the
    concatenation with the skip connection (N, C + C_skip, 2H, 2W)."""

    def __init__(self, deconv: nn.ConvTranspose2d, norm: nn.Module | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.channels = deconv.out_channels
        self.conv = _Conv(parity_major_conv(deconv).to(dtype), "none" if norm is not None else "relu")
        self.norm = TileNorm(norm, 0.0) if norm is not None else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        c = self.channels
        joined = torch.empty((n, c + skip.shape[1], 2 * h, 2 * w), dtype=x.dtype, device=x.device, memory_format=_CL)
        z = self.conv(x)  # (N, 4C, H + 1, W + 1)
        if self.norm is None:
            interleave_into(z, joined[:, :c])
        else:
            y = torch.empty((n, c, 2 * h, 2 * w), dtype=x.dtype, device=x.device, memory_format=_CL)
            self.norm(interleave_into(z, y), out=joined[:, :c])
        joined[:, c:] = skip
        return joined


class ChannelsLastUNet(nn.Module):
    """Inference-only, channels-last form of a :class:`Generator` (module docstring).

    ``dtype``: the precision of weights and activations (bfloat16 by default); tiles go
    in and come out as float32 NCHW, any batch and any multiple of the generator's tile size.
    """

    def __init__(self, gen: Generator, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if gen.training:
            raise ValueError("build the engine from a generator in eval mode (gen.eval())")
        self.dtype, self.config = dtype, gen.config
        downs = []
        for d in gen.downs:  # (N, 3, 256, 256) → … → (N, 512, 1, 1)
            conv, norm = fold_batch_norm(d.conv, d.norm)
            downs.append(_Down(conv, norm, d.act.negative_slope, dtype))
        ups = []
        for u in gen.ups:  # (N, 512, 1, 1) → … → (N, 128, 128, 128) with the skips
            conv, norm = fold_batch_norm(as_conv_transpose(u.conv), u.norm)
            ups.append(_Up(conv.float(), norm, dtype))
        self.downs, self.ups = nn.ModuleList(downs), nn.ModuleList(ups)
        head = as_conv_transpose(gen.head[0])
        self.out_channels = head.out_channels
        self.head = _Conv(parity_major_conv(head).to(dtype), "tanh")
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).contiguous(memory_format=_CL)
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottleneck is not concatenated with itself
        for up in self.ups:
            x = up(x, skips.pop())
        z = self.head(x)  # (N, 4·3, H/2 + 1, W/2 + 1), tanh applied
        n, _, h1, w1 = z.shape
        out = torch.empty((n, self.out_channels, 2 * (h1 - 1), 2 * (w1 - 1)), device=z.device)
        return interleave_into(z, out)  # (N, 3, H, W) float32, NCHW
