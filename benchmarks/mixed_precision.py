"""How far mixed-precision training's gradients are from float32's, against the noise
the recipe itself has.

At a trained model's weights (default: the shipped model and its discriminator), on
jittered training pairs, one training step's gradients are computed four ways, each
from the same weights:

- float32 and bfloat16 autocast (what ``geo-pix2pix train`` runs on a CPU with bfloat16
  arithmetic), same batch, same dropout mask: the error mixed precision adds;
- float32 with another dropout mask (the generator's decoder dropout, part of the
  recipe): the noise every float32 step already has;
- float32 on another batch.

For D's gradient (D step) and G's gradient (G step) it prints the cosine similarity to
the float32 gradient and the relative L2 difference. bfloat16 autocast is forced on
(``devices.cpu_has_native_bf16`` is bypassed), so the figures hold on any CPU; only the
speed needs the hardware (``benchmarks/train_throughput.py``).

    python benchmarks/mixed_precision.py DATA [--weights model.pt] [--batches 6] [--batch-size 4]
        [--layout side-by-side] [--direction BtoA]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from geo_pix2pix.cli.main import _pair_source
from geo_pix2pix.model import devices
from geo_pix2pix.model.checkpoints import load_checkpoint
from geo_pix2pix.model.load import default_model_path
from geo_pix2pix.train.data import Jitter, JitteredPairs, split_names


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a, b, dim=0))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class StepGradients:
    """One pix2pix step's D and G gradients (as Trainer.step computes them), flattened."""

    def __init__(self, G: nn.Module, D: nn.Module) -> None:
        self.G, self.D, self.bce = G.train(), D.train(), nn.BCEWithLogitsLoss()

    def __call__(self, map_: torch.Tensor, real: torch.Tensor, mixed: bool, seed: int):
        cpu, G, D, bce = torch.device("cpu"), self.G, self.D, self.bce
        torch.manual_seed(seed)  # the dropout mask
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        with devices.autocast(cpu, mixed, cpu_bf16=True):
            fake = G(map_)
            pf, pr = D(map_, fake.detach()).float(), D(map_, real).float()
            loss_d = 0.5 * (bce(pf, torch.zeros_like(pf)) + bce(pr, torch.ones_like(pr)))
        loss_d.backward()
        grad_d = torch.cat([p.grad.flatten() for p in D.parameters()])
        D.requires_grad_(False)
        try:
            with devices.autocast(cpu, mixed, cpu_bf16=True):
                pf = D(map_, fake).float()
                loss_g = bce(pf, torch.ones_like(pf)) + 100 * (fake.float() - real).abs().mean()
            G.zero_grad(set_to_none=True)
            loss_g.backward()
        finally:
            D.requires_grad_(True)
        return grad_d, torch.cat([p.grad.flatten() for p in G.parameters()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--weights", default=None, help="a checkpoint with a discriminator [default: the shipped model]")
    ap.add_argument("--layout", default="side-by-side")
    ap.add_argument("--direction", default="BtoA")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    devices.cpu_has_native_bf16 = lambda: True  # the numbers, not the speed
    ckpt = load_checkpoint(args.weights or default_model_path())
    D = ckpt.build_discriminator()
    if D is None:
        raise SystemExit(f"{ckpt.path}: no discriminator stored; pass a training checkpoint")
    step = StepGradients(ckpt.build_generator().float(), D.float())
    source = _pair_source(args.layout, args.data, args.direction, None)
    train_idx, _ = split_names(source.names, 0.1)
    data = JitteredPairs(source, train_idx, Jitter((256, 300), 256), seed=1)
    rows: dict[str, list[tuple[float, float, float, float]]] = {
        "bfloat16 autocast": [], "float32, another dropout mask": [], "float32, another batch": []}
    for i in range(args.batches):
        m, r = data.sample(args.batch_size)
        m2, r2 = data.sample(args.batch_size)
        d32, g32 = step(m, r, False, i)
        for label, (d, g) in (("bfloat16 autocast", step(m, r, True, i)),
                              ("float32, another dropout mask", step(m, r, False, i + 1000)),
                              ("float32, another batch", step(m2, r2, False, i))):
            rows[label].append((cos(d, d32), rel(d, d32), cos(g, g32), rel(g, g32)))
    print(f"{ckpt.path}: {args.batches} batches of {args.batch_size}; against the float32 gradient of the same "
          f"batch and dropout mask (median, [min–max])")
    print(f"  {'':30s} {'D cos':>22s} {'D rel L2':>22s} {'G cos':>22s} {'G rel L2':>22s}")
    for label, rs in rows.items():
        cells = []
        for k in range(4):
            xs = [r[k] for r in rs]
            cells.append(f"{statistics.median(xs):7.4f} [{min(xs):.4f}–{max(xs):.4f}]")
        print(f"  {label:30s} " + " ".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    main()
