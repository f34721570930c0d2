"""Model-only inference throughput: the reference way against geo-pix2pix's engine.

Everything is measured in one process, on the same weights, so the ratios hold even
on a shared machine whose absolute speed moves from run to run:

- the machine's fp32 matrix-product rate (2048 × 2048 `torch.mm`), the practical limit;
- the *reference*: a plain eager U-Net written here the way the pix2pix reference code
  runs it (fp32, batch 1, norm layers as separate modules), loaded with the same weights;
- the engine (`geo_pix2pix.model.run_batch`, fixed compute chunk) at its chunk size.

For each model it prints tiles/s, the ratio to the reference, achieved GFLOP/s, its
share of the matrix-product rate and the largest output difference from the reference.

    python benchmarks/model_throughput.py [--weights default|paper|PATH ...] [--seconds 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

import geo_pix2pix
from geo_pix2pix.model import COMPUTE_CHUNK, run_batch
from geo_pix2pix.networks import Generator, GeneratorConfig, gflop_per_tile


class ReferenceUNet(nn.Module):
    """The paper's U-Net as a plain list of layers, run eagerly (the baseline)."""

    def __init__(self, gen: Generator) -> None:
        super().__init__()
        self.downs = nn.ModuleList(nn.Sequential(d.conv, d.norm, nn.LeakyReLU(0.2)) for d in gen.downs)
        self.ups = nn.ModuleList(nn.Sequential(u.conv, u.norm, nn.ReLU()) for u in gen.ups)
        self.head = gen.head

    def forward(self, x):
        skips = []
        for d in self.downs:
            x = d(x)
            skips.append(x)
        skips.pop()
        for u in self.ups:
            x = torch.cat([u(x), skips.pop()], 1)
        return self.head(x)


def matmul_gflops(seconds: float) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    return n * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9


def rate(fn, tiles_per_call: int, seconds: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += tiles_per_call
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", default=["default", "paper"])
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    peak = matmul_gflops(args.seconds / 2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"fp32 2048² matrix product: {peak:.0f} GFLOP/s")
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (COMPUTE_CHUNK, 3, 256, 256), dtype=np.uint8)
    for name in args.weights:
        if name == "default":
            model = geo_pix2pix.load_model(None, "cpu")
            gen = model.generator
        elif name == "paper":
            torch.manual_seed(0)
            gen = Generator(GeneratorConfig()).eval()  # width 64, BatchNorm (eval)
            model = gen
        else:
            model = geo_pix2pix.load_model(name, "cpu")
            gen = model.generator
        ref = ReferenceUNet(gen).eval()
        gflop = gflop_per_tile(gen.config)
        x1 = torch.from_numpy(tiles[:1]).float() / 127.5 - 1
        r_ref = rate(lambda: ref(x1), 1, args.seconds)
        r_eng = rate(lambda: run_batch(model, tiles), COMPUTE_CHUNK, args.seconds)
        diff = float(np.abs(run_batch(model, tiles[:1]) - ref(x1).numpy()).max())
        print(f"{name}: width {gen.config.base_width}, {gflop:.2f} GFLOP/tile")
        for label, r in (("reference (eager, batch 1)", r_ref), (f"engine (chunk {COMPUTE_CHUNK})", r_eng)):
            print(f"  {label:28s} {r:7.2f} tiles/s  ×{r / r_ref:4.2f}  {r * gflop:6.1f} GFLOP/s "
                  f"({100 * r * gflop / peak:4.1f} % of matmul)")
        print(f"  largest |engine − reference| on [-1, 1]: {diff:.2e}")


if __name__ == "__main__":
    main()
