"""Candidate model paths on the shipped default model: kept only with a measured gain of 15 %.

Each candidate is measured against the path geo-pix2pix ships, in one process, on the
same weights, with the two ways interleaved call by call (the order swapped every
repeat), so that a machine whose speed moves from second to second affects both alike.
It prints the median time per call of each way and the candidate's gain as the median
of the per-pair time ratios, next to the CPU and its flags:

- **packed weights** in the channels-last engine (:class:`~geo_pix2pix.model.engine_amx.ChannelsLastUNet`,
  the engine on CPUs with AMX), fp32 and bf16, chunk of 8 tiles: every convolution's
  weight reordered once into oneDNN's blocked layout and the activation fused, through
  PyTorch's private ``torch.ops.mkldnn._convolution_pointwise`` operators;
- **the matrix-product + fold form of the transposed convolution** on the CPU (inputs of
  at most 64 pixels, weights of at least 2^18 channel pairs), for a training step of the
  generator (forward and backward, batch 1 and 4).

    python benchmarks/model_paths.py [--repeats 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from geo_pix2pix.model import devices
from geo_pix2pix.model.engine import COMPUTE_CHUNK
from geo_pix2pix.model.engine_amx import ChannelsLastUNet
from geo_pix2pix.model.load import load_model
from geo_pix2pix.model.networks import Up

GAIN = 1.15  # what a path on private or deprecated APIs has to show


class PackedConv(nn.Module):
    """The candidate: a channels-last engine convolution with its weight reordered once for
    ``input_size`` and its activation fused (private oneDNN operators)."""

    def __init__(self, plain: nn.Module, input_size: list[int]) -> None:
        super().__init__()
        conv = plain.conv
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation))
        self.weight = torch.ops.mkldnn._reorder_convolution_weight(conv.weight.detach(), *self.geometry, 1,
                                                                   input_size)
        self.bias = conv.bias.detach()
        self.attr = plain.activation
        self.scalars = [plain.slope] if plain.activation == "leaky_relu" else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *self.geometry, 1, self.attr,
                                                       self.scalars, "")


def packed(engine: ChannelsLastUNet, x: torch.Tensor) -> ChannelsLastUNet:
    """``engine`` with every convolution replaced by a :class:`PackedConv` (in place)."""
    convs = {name: m for name, m in engine.named_modules() if type(m).__name__ == "_Conv"}
    shapes: dict[str, list[int]] = {}

    def record(name: str, inputs: tuple) -> None:
        shapes.setdefault(name, list(inputs[0].shape))

    hooks = [m.register_forward_pre_hook(lambda m, i, name=name: record(name, i)) for name, m in convs.items()]
    engine(x)
    for h in hooks:
        h.remove()
    for name, m in convs.items():
        parent, _, attr = name.rpartition(".")
        setattr(engine.get_submodule(parent) if parent else engine, attr, PackedConv(m, shapes[name]))
    return engine


def fold_eligible(conv: nn.ConvTranspose2d, x: torch.Tensor) -> bool:
    n, cin, h, w = x.shape
    return x.device.type == "cpu" and n * h * w <= 64 and cin * conv.out_channels >= 1 << 18


class FoldDeconv(nn.Module):
    """The candidate: a stride-2 transposed convolution as one matrix product and a fold,
    where :func:`fold_eligible` (as it stood in ``networks.py``)."""

    def __init__(self, conv: nn.ConvTranspose2d) -> None:
        super().__init__()
        self.conv, self.used = conv, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if not fold_eligible(conv, x):
            return conv(x)
        self.used = True
        n, cin, h, w = x.shape
        patches = torch.matmul(conv.weight.reshape(cin, -1).t(), x.reshape(n, cin, h * w))  # (N, C_out·16, H·W)
        y = F.fold(patches, (2 * h, 2 * w), 4, padding=1, stride=2)
        return y if conv.bias is None else y + conv.bias.reshape(1, -1, 1, 1)


def interleaved(shipped, candidate, repeats: int) -> tuple[float, float, float]:
    """Median seconds per call of each, and the median of candidate/shipped speed ratios."""
    for f in (shipped, candidate, shipped, candidate):
        f()
    a, b = [], []
    for i in range(repeats):
        for f, times in ((shipped, a), (candidate, b)) if i % 2 else ((candidate, b), (shipped, a)):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b), statistics.median(x / y for x, y in zip(a, b, strict=True))


def report(label: str, shipped: float, candidate: float, gain: float, unit: int) -> None:
    verdict = "keep" if gain >= GAIN else "remove"
    print(f"  {label:44s} shipped {unit / shipped:7.2f}/s  candidate {unit / candidate:7.2f}/s  "
          f"gain ×{gain:.3f}  → {verdict} (needs ×{GAIN:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=40, help="calls of each way")
    ap.add_argument("--threads", type=int, help="torch threads (default: PyTorch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {devices.cpu_description()}; bfloat16: {devices.cpu_bf16_kind() or 'emulated'}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} interleaved calls per way")
    gen = load_model(None, "cpu").generator
    print(f"default model: width {gen.config.base_width}, norm {gen.config.norm}")

    print("packed weights in ChannelsLastUNet (tiles/s, chunk of 8):")
    torch.manual_seed(0)
    x = torch.rand(COMPUTE_CHUNK, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            plain = ChannelsLastUNet(gen, dtype=dtype)
            cand = packed(ChannelsLastUNet(gen, dtype=dtype), x)
            diff = float((plain(x) - cand(x)).abs().max())
            t = interleaved(lambda e=plain: e(x), lambda e=cand: e(x), args.repeats)
            report(f"{name} (largest output difference {diff:.2g})", *t, COMPUTE_CHUNK)

    print("matrix product + fold for the transposed convolutions (training steps/s, forward + backward):")
    for batch in (1, 4):
        xb = torch.rand(batch, 3, 256, 256) * 2 - 1
        shipped = gen.train()
        cand = _with_fold(gen)

        def step(g, xb=xb):
            g.zero_grad(set_to_none=True)
            g(xb).square().mean().backward()

        t = interleaved(lambda g=shipped: step(g), lambda g=cand: step(g), max(4, args.repeats // 4))
        folds = [m for m in cand.modules() if isinstance(m, FoldDeconv)]
        eligible = sum(m.used for m in folds)
        report(f"batch {batch} ({eligible} of {len(folds)} decoder layers eligible)", *t, 1)
    gen.eval()


def _with_fold(gen: nn.Module) -> nn.Module:
    """A copy of ``gen`` whose decoder's transposed convolutions run as :class:`FoldDeconv`."""
    import copy

    other = copy.deepcopy(gen)
    for up in other.modules():
        if isinstance(up, Up):
            up.conv = FoldDeconv(up.conv)
    return other


if __name__ == "__main__":
    main()
