"""The inference engine: a generator rewritten for speed, same function.

:class:`InferenceUNet` is built from a trained :class:`~geo_pix2pix.networks.Generator`
in eval mode and computes the same function (within float rounding, about 1e-6 on the
[-1, 1] scale; ``tests/test_engine.py`` holds it to 1e-4). Each change was chosen by
measurement (``benchmarks/model_throughput.py``, figures in ``docs/performance.md``):

- **BatchNorm folded into the convolution before it.** At inference BatchNorm is an
  affine map per channel, so ``norm(conv(x))`` is ``conv'(x)`` with scaled weights and a
  bias: one pass over the activations instead of two. InstanceNorm depends on the tile
  itself and stays.
- **Channels-last memory format** when no norm layer is left (BatchNorm models).
  oneDNN's (and cuDNN's) fastest convolution kernels work on NHWC; with NCHW tensors
  every layer reorders its input and output: +20 % on the paper-width generator on a
  2-core AVX2 CPU. InstanceNorm models stay NCHW, where InstanceNorm is fast.
- **The last layer as a sub-pixel convolution** (:class:`SubPixelDeconv`). A stride-2
  transposed convolution to 3 channels runs at a fraction of the machine's rate (its
  output has so few channels that the matrix products are thin). The same function is
  a 2 × 2 convolution to 4 × 3 channels followed by a pixel shuffle: 2.7× faster
  here. For the wide decoder layers oneDNN's own transposed convolution is faster in
  float32, so they stay; the int8 path (:mod:`quantize`) converts them all.
- **In-place activations**, no dropout, no autograd.

The engine is an inference-only snapshot: it copies the weights when built.
:class:`~geo_pix2pix.model.Pix2PixModel` builds it lazily and rebuilds it when the
generator's weights or device change.
"""

from __future__ import annotations

import torch
from torch import nn

from .networks import Generator

__all__ = ["InferenceUNet", "SubPixelDeconv", "fold_batch_norm"]


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
    grid shifted by ``(a, b)``, and a pixel shuffle interleaves the four. The same
    multiply-adds as the transposed convolution (plus one row and column), but as a
    plain convolution, which int8 kernels quantise per output channel (PyTorch cannot
    quantise a transposed convolution per channel, and per tensor it loses the
    picture: see :mod:`quantize`).
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
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        z = self.conv(x)  # (N, 4·C_out, H + 1, W + 1)
        parts = [z[:, 2 * a + b :: 4, a : a + h, b : b + w] for a in range(2) for b in range(2)]
        y = torch.stack(parts, dim=2)  # (N, C_out, 4, H, W)
        return self.shuffle(y.reshape(n, -1, h, w))  # (N, C_out, 2H, 2W)


class _Block(nn.Module):
    """conv → [norm] → activation, the activation in place. Modules, not functions,
    so that quantisation (:mod:`quantize`) recognises and fuses them."""

    def __init__(self, conv: nn.Module, norm: nn.Module | None, slope: float) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm if norm is not None else nn.Identity()
        self.act = nn.LeakyReLU(slope, inplace=True) if slope else nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class InferenceUNet(nn.Module):
    """Inference-only form of a :class:`Generator` (see the module docstring)."""

    def __init__(self, gen: Generator, channels_last: bool | None = None, subpixel_decoder: bool = False) -> None:
        super().__init__()
        if gen.training:
            raise ValueError("build the engine from a generator in eval mode (gen.eval())")
        self.config = gen.config
        self.downs = nn.ModuleList(_Block(*fold_batch_norm(d.conv, d.norm), 0.2) for d in gen.downs)
        self.ups = nn.ModuleList(_Block(*fold_batch_norm(u.conv, u.norm), 0.0) for u in gen.ups)
        if subpixel_decoder:
            for up in self.ups:
                up.conv = SubPixelDeconv(up.conv)
        self.head = SubPixelDeconv(gen.head[0])
        self.tanh = nn.Tanh()
        if channels_last is None:
            # Channels-last wins where every norm was folded away; InstanceNorm on
            # channels-last tensors reorders them to NCHW and back, which costs more
            # than it saves (default model: 55 vs 62 tiles/s, benchmarks/model_throughput.py).
            channels_last = not any(isinstance(m, nn.InstanceNorm2d) for m in self.modules())
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for down in self.downs:  # (N, 3, 256, 256) → … → (N, 512, 1, 1)
            x = down(x)
            skips.append(x)
        skips.pop()
        for up in self.ups:  # (N, 512, 1, 1) → … → (N, 64, 128, 128)
            x = torch.cat([up(x), skips.pop()], dim=1)
        return self.tanh(self.head(x)).contiguous()  # (N, 3, 256, 256)
