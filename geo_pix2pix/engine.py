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
  every layer reorders its input and output (gain in ``docs/performance.md``).
  InstanceNorm models stay NCHW, where InstanceNorm is fast.
- **The last layer as a sub-pixel convolution** (:class:`SubPixelDeconv`). A stride-2
  transposed convolution to 3 channels runs at a fraction of the machine's rate (its
  output has so few channels that the matrix products are thin). The same function is
  a 2 × 2 convolution to 4 × 3 channels whose four parities are interleaved: 2.7× faster
  here. For the wide decoder layers oneDNN's own transposed convolution is faster in
  float32, so they stay; the int8 path (:mod:`quantize`) converts them all.
- **Weights reordered once, activations fused** (:class:`PackedConv`, CPU, float32,
  channels-last). Called with an ordinary weight, oneDNN reorders it into its blocked
  layout on every call, which for the wide, small-spatial layers of the U-Net costs
  more than the convolution itself; PyTorch's ``mkldnn`` operators (the ones its
  compiler uses when it freezes a model) take the weight reordered in advance and
  apply the ReLU / LeakyReLU inside the convolution: +12 % on the paper-width
  generator, bit-identical outputs.
- **In-place activations**, no dropout, no autograd.
- **bfloat16, on request** (:func:`bfloat16_engine`, ``--precision bf16``). On a CPU that
  multiplies bfloat16 in hardware (AVX512-BF16 or AMX) oneDNN's bfloat16 convolutions
  run at twice the float32 rate or more; outputs differ from float32 by about 0.7 grey
  levels on average, at most about 12 (``benchmarks/model_throughput.py``).

These choices were measured on a CPU with AVX512-BF16 and no AMX. On a CPU with AMX,
:func:`float32_engine` and :func:`bfloat16_engine` build :mod:`engine_nhwc`'s
channels-last engine instead, chosen by the CPU's flags (:func:`devices.cpu_bf16_kind`).

The engine is an inference-only snapshot: it copies the weights when built.
:class:`~geo_pix2pix.model.Pix2PixModel` builds it lazily and rebuilds it when the
generator's weights or device change.
"""

from __future__ import annotations

import torch
from torch import nn

from . import devices
from .networks import Generator

#: Tiles per network evaluation (``model.run_batch``), and the batch the engine's
#: weights are packed for. Convolution libraries (oneDNN, cuDNN) pick different
#: algorithms for different batch sizes, whose float results differ in the last bit
#: (measured: up to 2e-7, enough to flip a few uint8 values per tile). With a fixed
#: chunk, zero-padded when short, a tile's output is bit-identical whatever the
#: batch size asked for, its batch-mates, or its position in the batch.
COMPUTE_CHUNK = 8

__all__ = ["COMPUTE_CHUNK", "ChannelsLast", "InferenceUNet", "PackedConv", "ParityInterleave", "SubPixelDeconv",
           "bfloat16_engine", "float32_engine", "fold_batch_norm", "packing_available", "prefers_channels_last"]


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
        self.interleave = ParityInterleave()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.interleave(self.conv(x))


class ParityInterleave(nn.Module):
    """The last step of :class:`SubPixelDeconv`: ``(N, 4·C, H + 1, W + 1)`` → ``(N, C, 2H, 2W)``.

    Parity ``(a, b)`` (channels ``4c + 2a + b``) is the grid shifted by ``(a, b)``. The
    result is laid out channels-last (memory order N, 2H, 2W, C), what the next
    convolution wants, built with two stacks of views and no pixel shuffle. A module of
    its own so that the int8 path can keep it in float (:mod:`quantize`).
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


_PACKED_OPS = ("_convolution_pointwise", "_convolution_transpose_pointwise", "_reorder_convolution_weight",
               "_reorder_convolution_transpose_weight")


def packing_available() -> bool:
    """Whether this PyTorch has oneDNN's prepacked-weight convolution operators, and
    oneDNN is not switched off (``torch.backends.mkldnn.enabled``)."""
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and all(hasattr(torch.ops.mkldnn, op) for op in _PACKED_OPS))


class PackedConv(nn.Module):
    """A convolution (or transposed convolution) and its activation as one oneDNN call.

    The weight is reordered once, here, into the blocked layout oneDNN picks for the
    expected input (any other input size still works: the layout is a hint), and the
    activation (``"relu"``, ``"leaky_relu"`` or ``"none"``) runs inside the convolution.
    CPU, float32 or bfloat16; the weight is a oneDNN tensor, so the module is a snapshot: it pickles
    and copies (as the ordinary weight, packed again on arrival) but is not moved to
    another device or dtype, nor trained.
    """

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d, activation: str = "none", slope: float = 0.0,
                 input_size: tuple[int, int, int, int] | None = None) -> None:
        super().__init__()
        if conv.weight.device.type != "cpu" or conv.weight.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"PackedConv runs float32 or bfloat16 on the CPU, not {conv.weight.dtype} on "
                             f"{conv.weight.device}")
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError(f"PackedConv needs one group and zero padding, not {conv}")
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation))
        self.output_padding = list(conv.output_padding) if self.transposed else None
        self.activation, self.scalars = activation, ([slope] if activation == "leaky_relu" else [])
        self.input_size = list(input_size) if input_size else None
        self.weight = self._packed(conv.weight.detach())
        self.register_buffer("bias", conv.bias.detach().clone() if conv.bias is not None else None)

    def _packed(self, w: torch.Tensor) -> torch.Tensor:
        padding, stride, dilation = self.geometry
        if self.transposed:
            return torch.ops.mkldnn._reorder_convolution_transpose_weight(
                w, padding, self.output_padding, stride, dilation, 1, self.input_size)
        return torch.ops.mkldnn._reorder_convolution_weight(w, padding, stride, dilation, 1, self.input_size)

    def __getstate__(self) -> dict:
        # A oneDNN tensor does not pickle or copy: travel as the ordinary weight.
        state = dict(self.__dict__)
        dense = self.weight.to_dense()
        state["weight"] = dense.transpose(0, 1).contiguous() if self.transposed else dense
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.weight = self._packed(state["weight"])

    def _apply(self, fn, recurse=True):
        raise RuntimeError("a PackedConv is a CPU snapshot: build the engine again (InferenceUNet) "
                           "for another device or dtype")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding, stride, dilation = self.geometry
        if self.transposed:
            return torch.ops.mkldnn._convolution_transpose_pointwise(
                x, self.weight, self.bias, padding, self.output_padding, stride, dilation, 1,
                self.activation, self.scalars, "")
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, padding, stride, dilation, 1, self.activation, self.scalars, "")


class ChannelsLast(nn.Module):
    """The engine's input converted to channels-last (a module: the int8 path keeps it in
    float, so that the map itself is not quantised on the way in)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


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

    def pack(self, input_size: tuple[int, int, int, int]) -> None:
        """Replace the convolution by a :class:`PackedConv`, with the activation fused
        into it when no norm layer stands between them."""
        if not isinstance(self.norm, nn.Identity):
            self.conv = PackedConv(self.conv, input_size=input_size)
            return
        slope = self.act.negative_slope if isinstance(self.act, nn.LeakyReLU) else 0.0
        self.conv = PackedConv(self.conv, "leaky_relu" if slope else "relu", slope, input_size)
        self.act = nn.Identity()


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
                 pack: bool | None = None, batch: int = COMPUTE_CHUNK, dtype: torch.dtype = torch.float32) -> None:
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
        self.ups = nn.ModuleList(_Block(*fold_batch_norm(u.conv, u.norm), 0.0) for u in gen.ups)
        if subpixel_decoder:
            for up in self.ups:
                up.conv = SubPixelDeconv(up.conv)
        self.head = SubPixelDeconv(gen.head[0])
        self.tanh = nn.Tanh()
        if channels_last is None:
            channels_last = prefers_channels_last(gen)
        self.channels_last = channels_last
        self.layout = ChannelsLast() if channels_last else nn.Identity()
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if dtype != torch.float32:
            self.to(dtype)
        if pack is None:
            # Measured on channels-last models only; the quantised and ONNX paths need
            # ordinary modules, and oneDNN is a CPU library, which reorders bfloat16
            # weights only on CPUs with bfloat16 support (elsewhere: unpacked and slow,
            # see model.py).
            weight = self.head.conv.weight
            pack = (channels_last and not subpixel_decoder and packing_available() and weight.device.type == "cpu"
                    and (weight.dtype == torch.float32
                         or (weight.dtype == torch.bfloat16 and devices.cpu_has_native_bf16())))
        if pack and subpixel_decoder:
            raise ValueError("pack=True and subpixel_decoder=True: the sub-pixel decoder is for the int8 path, "
                             "which packs its own weights")
        self.packed = pack
        if pack:
            self._pack(batch)
        self.eval().requires_grad_(False)

    def _pack(self, batch: int) -> None:
        self.packed = True
        size = max(256, self.config.multiple)  # the layout hint: a 256² tile
        for down in self.downs:
            down.pack((batch, down.conv.in_channels, size, size))
            size //= 2
        for up in self.ups:
            up.pack((batch, up.conv.in_channels, size, size))
            size *= 2
        conv = self.head.conv
        self.head.conv = PackedConv(conv, input_size=(batch, conv.in_channels, size, size))

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
    """:class:`engine_nhwc.ChannelsLastUNet` where ``cpu`` (``"auto"``: :func:`devices.cpu_bf16_kind`)
    is ``"amx"`` and the generator is on the CPU, else None."""
    if cpu == "auto":
        cpu = devices.cpu_bf16_kind()
    if cpu != "amx" or next(gen.parameters()).device.type != "cpu":
        return None
    from .engine_nhwc import ChannelsLastUNet

    return ChannelsLastUNet(gen, dtype=dtype)


def float32_engine(gen: Generator, cpu: str | None = "auto") -> nn.Module:
    """The engine of ``gen`` in float32 (``--precision fp32``, the default), its layout chosen
    by the CPU as in :func:`bfloat16_engine`: on a CPU with AMX the channels-last engine,
    which measured faster there than :class:`InferenceUNet` for InstanceNorm models and as
    fast for BatchNorm ones (``docs/performance.md``); elsewhere :class:`InferenceUNet`, as
    measured without AMX."""
    return _amx_engine(gen, cpu, torch.float32) or InferenceUNet(gen)


def bfloat16_engine(gen: Generator, cpu: str | None = "auto") -> nn.Module:
    """The engine of ``gen`` in bfloat16 (``--precision bf16``): float32 tiles in and
    out, bfloat16 weights and activations in between (validation split, default model:
    L1 +0.0002 and SSIM −0.0006 against float32, ``docs/performance.md``).

    The layout is chosen by how the CPU multiplies bfloat16: ``cpu``, by default
    (``"auto"``) :func:`devices.cpu_bf16_kind`, read once; the tests pass its values to run
    every path on any CPU:

    - ``"amx"``: :class:`engine_nhwc.ChannelsLastUNet`, every layer channels-last with
      packed weights and a sub-pixel decoder, the layout oneDNN's AMX kernels work in;
    - otherwise (AVX512-BF16, or emulated) the float32 engine's graph, as measured
      without AMX: NCHW (InstanceNorm) models get the sub-pixel decoder, whose 2 × 2
      convolutions oneDNN runs faster in bfloat16 than its transposed ones; channels-last
      (BatchNorm) models keep the transposed convolutions and, where oneDNN can reorder
      bfloat16 weights, have them packed.
    """
    return (_amx_engine(gen, cpu, torch.bfloat16)
            or InferenceUNet(gen, subpixel_decoder=not prefers_channels_last(gen), dtype=torch.bfloat16))
