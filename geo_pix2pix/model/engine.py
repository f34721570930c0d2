"""The inference engine: a generator rewritten for speed, the same function.

:class:`InferenceUNet` folds BatchNorm into the convolutions, runs BatchNorm models
channels-last, turns the head into a sub-pixel convolution (:class:`SubPixelDeconv`) and
runs without dropout or autograd, in float32 or (``--precision bf16``) bfloat16. On CPUs
with AMX :func:`float32_engine` and :func:`bfloat16_engine` build :mod:`.engine_amx`'s
channels-last engine instead. Each choice, and the CPU it was measured on, is in
``docs/performance.md``; ``tests/test_engine.py`` holds every engine to the generator.
"""

from __future__ import annotations

import torch
from torch import nn

from . import devices
from .networks import Generator, as_conv_transpose

#: Tiles per network evaluation (``model.run_batch``). Convolution libraries (oneDNN, cuDNN) pick different
#: algorithms for different batch sizes, whose float results differ in the last bit
#: (measured: up to 2e-7, enough to flip a few uint8 values per tile). With a fixed
#: chunk, zero-padded when short, a tile's output is bit-identical whatever the
#: batch size asked for, its batch-mates, or its position in the batch.
COMPUTE_CHUNK = 8

__all__ = ["COMPUTE_CHUNK", "ChannelsLast", "InferenceUNet", "ParityInterleave", "SubPixelDeconv",
           "bfloat16_engine", "float32_engine", "fold_batch_norm", "prefers_channels_last"]


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


@torch.no_grad()
def fold_batch_norm(conv: nn.Conv2d | nn.ConvTranspose2d, norm: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """``(conv', norm')`` computing ``norm(conv(x))`` at inference.

    An eval-mode BatchNorm is folded into a copy of ``conv`` (``norm'`` is None); any
    other norm (InstanceNorm, Identity) is returned unchanged beside a copy of ``conv``.
    """
    is_transposed = isinstance(conv, nn.ConvTranspose2d)
    new = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight.copy_(conv.weight)
    bias = conv.bias.clone() if conv.bias is not None else torch.zeros_like(new.bias)
    if isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats and not norm.training:
        scale, shift = _bn_scale_shift(norm)
        # Output channels are dim 0 of a Conv2d weight, dim 1 of a ConvTranspose2d's.
        shape = (1, -1, 1, 1) if is_transposed else (-1, 1, 1, 1)
        new.weight.mul_(scale.reshape(shape))
        new.bias.copy_(bias * scale + shift)
        return new, None
    new.bias.copy_(bias)
    return new, (None if isinstance(norm, nn.Identity) else norm)


class SubPixelDeconv(nn.Module):
    """A stride-2, kernel-4 transposed convolution as one ordinary 2 × 2 convolution.

    Output pixel ``(2i + a, 2j + b)`` of the transposed convolution depends on a 2 × 2
    neighbourhood of input pixels: rows ``i - 1, i`` for even output rows (a = 0),
    ``i, i + 1`` for odd ones, likewise for columns. One 2 × 2 convolution with
    padding 1 computes all four parities at once, as ``4 · C_out`` channels over an
    ``(H + 1) × (W + 1)`` grid (channel ``4c + 2a + b``); parity ``(a, b)`` is that
    grid shifted by ``(a, b)``, and :class:`ParityInterleave` interleaves the four. The same
    multiply-adds as the transposed convolution (plus one row and column), but as a
    plain convolution, which int8 kernels quantise per output channel (PyTorch cannot
    quantise a transposed convolution per channel, and per tensor it loses the
    picture: see :mod:`accel.int8`).
    """

    #: kernel rows (or columns) of the 4 × 4 kernel used by parity 0 and parity 1,
    #: in the order of the 2 × 2 window: parity 0 sees input i - 1 (tap 3) then i (tap 1)
    TAPS = ((3, 1), (2, 0))

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        if (deconv.kernel_size, deconv.stride, deconv.padding) != ((4, 4), (2, 2), (1, 1)):
            raise ValueError(f"SubPixelDeconv needs kernel 4, stride 2, padding 1, not {deconv}")
        w = deconv.weight.detach()  # (C_in, C_out, 4, 4)
        cin, cout = w.shape[:2]
        k = w.new_empty(cout, 2, 2, cin, 2, 2)  # (C_out, a, b, C_in, 2, 2)
        for a in range(2):
            for b in range(2):
                rows, cols = self.TAPS[a], self.TAPS[b]
                k[:, a, b] = w[:, :, list(rows)][:, :, :, list(cols)].transpose(0, 1)
        self.conv = nn.Conv2d(cin, 4 * cout, 2, padding=1, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(k.reshape(4 * cout, cin, 2, 2))
            bias = deconv.bias if deconv.bias is not None else w.new_zeros(cout)
            self.conv.bias.copy_(bias.detach().repeat_interleave(4))
        self.interleave = ParityInterleave()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.interleave(self.conv(x))


class ParityInterleave(nn.Module):
    """The last step of :class:`SubPixelDeconv`: ``(N, 4·C, H + 1, W + 1)`` → ``(N, C, 2H, 2W)``.

    Parity ``(a, b)`` (channels ``4c + 2a + b``) is the grid shifted by ``(a, b)``. The
    result is laid out channels-last (memory order N, 2H, 2W, C), what the next
    convolution wants, built with two stacks of views and no pixel shuffle. A module of
    its own so that the int8 path can keep it in float (:mod:`accel.int8`).
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n, _, h1, w1 = z.shape
        h, w = h1 - 1, w1 - 1
        z = z.reshape(n, -1, 4, h1, w1)  # (N, C, parity, H + 1, W + 1), a view
        rows = []
        for a in range(2):
            parts = [z.narrow(2, 2 * a + b, 1).squeeze(2).narrow(2, a, h).narrow(3, b, w).permute(0, 2, 3, 1)
                     for b in range(2)]  # (N, H, W, C) each
            rows.append(torch.stack(parts, dim=3))  # (N, H, W, 2, C)
        y = torch.stack(rows, dim=2)  # (N, H, 2, W, 2, C)
        return y.reshape(n, 2 * h, 2 * w, -1).permute(0, 3, 1, 2)  # (N, C, 2H, 2W), channels-last


class ChannelsLast(nn.Module):
    """The engine's input converted to channels-last (a module: the int8 path keeps it in
    float, so that the map itself is not quantised on the way in)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


class _Block(nn.Module):
    """conv → [norm] → activation, the activation in place. Modules, not functions,
    so that quantisation (:mod:`accel.int8`) recognises and fuses them."""

    def __init__(self, conv: nn.Module, norm: nn.Module | None, slope: float) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm if norm is not None else nn.Identity()
        self.act = nn.LeakyReLU(slope, inplace=True) if slope else nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def prefers_channels_last(gen: nn.Module) -> bool:
    """Whether the engine of ``gen`` runs channels-last: where every norm folds away.
    InstanceNorm on channels-last tensors reorders them to NCHW and back, which costs
    more than it saves on CPUs without AMX (``docs/performance.md``)."""
    return not any(isinstance(m, nn.InstanceNorm2d) for m in gen.modules())


class InferenceUNet(nn.Module):
    """Inference-only form of a :class:`Generator` (see the module docstring).

    ``dtype``: the precision of its weights and activations (float32, or bfloat16 for
    :func:`bfloat16_engine`); tiles go in and come out as float32 either way.
    """

    def __init__(self, gen: Generator, channels_last: bool | None = None, subpixel_decoder: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if gen.training:
            raise ValueError("build the engine from a generator in eval mode (gen.eval())")
        if dtype != torch.float32:
            import copy

            # The InstanceNorm layers below are the generator's own: convert a copy.
            gen = copy.deepcopy(gen)
        self.dtype = dtype
        self.config = gen.config
        self.downs = nn.ModuleList(_Block(*fold_batch_norm(d.conv, d.norm), 0.2) for d in gen.downs)
        self.ups = nn.ModuleList(_Block(*fold_batch_norm(as_conv_transpose(u.conv), u.norm), 0.0) for u in gen.ups)
        if subpixel_decoder:
            for up in self.ups:
                up.conv = SubPixelDeconv(up.conv)
        self.head = SubPixelDeconv(as_conv_transpose(gen.head[0]))
        self.tanh = nn.Tanh()
        if channels_last is None:
            channels_last = prefers_channels_last(gen)
        self.channels_last = channels_last
        self.layout = ChannelsLast() if channels_last else nn.Identity()
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if dtype != torch.float32:
            self.to(dtype)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype != torch.float32:  # a constant: tracing (int8, ONNX) sees no cast
            x = x.to(self.dtype)
        x = self.layout(x)
        skips = []
        for down in self.downs:  # (N, 3, 256, 256) → … → (N, 512, 1, 1)
            x = down(x)
            skips.append(x)
        skips.pop()
        for up in self.ups:  # (N, 512, 1, 1) → … → (N, 64, 128, 128)
            x = torch.cat([up(x), skips.pop()], dim=1)
        y = self.tanh(self.head(x)).contiguous()  # (N, 3, 256, 256)
        return y if self.dtype == torch.float32 else y.float()


def _amx_engine(gen: Generator, cpu: str | None, dtype: torch.dtype) -> nn.Module | None:
    """:class:`.engine_amx.ChannelsLastUNet` where ``cpu`` (``"auto"``: :func:`devices.cpu_bf16_kind`)
    is ``"amx"`` and the generator is on the CPU, else None."""
    if cpu == "auto":
        cpu = devices.cpu_bf16_kind()
    if cpu != "amx" or next(gen.parameters()).device.type != "cpu":
        return None
    from .engine_amx import ChannelsLastUNet

    return ChannelsLastUNet(gen, dtype=dtype)


def float32_engine(gen: Generator, cpu: str | None = "auto") -> nn.Module:
    """The engine of ``gen`` in float32 (``--precision fp32``, the default), its layout chosen
    by the CPU as in :func:`bfloat16_engine`: the channels-last engine on a CPU with AMX,
    elsewhere :class:`InferenceUNet`."""
    return _amx_engine(gen, cpu, torch.float32) or InferenceUNet(gen)


def bfloat16_engine(gen: Generator, cpu: str | None = "auto") -> nn.Module:
    """The engine of ``gen`` in bfloat16 (``--precision bf16``): float32 tiles in and out,
    bfloat16 weights and activations in between. The layout follows how the CPU multiplies
    bfloat16: ``cpu``, by default :func:`devices.cpu_bf16_kind` (the tests pass each value):

    - ``"amx"``: :class:`.engine_amx.ChannelsLastUNet`, every layer channels-last with
      a sub-pixel decoder, the layout oneDNN's AMX kernels work in;
    - otherwise (AVX512-BF16, or emulated) the float32 engine's graph; NCHW (InstanceNorm)
      models get the sub-pixel decoder, which oneDNN runs faster in bfloat16.
    """
    return (_amx_engine(gen, cpu, torch.bfloat16)
            or InferenceUNet(gen, subpixel_decoder=not prefers_channels_last(gen), dtype=torch.bfloat16))
