"""Training steps/s: the pix2pix reference recipe's step against ``Trainer.step``.

One process, same networks (same initial weights), same batch, same data pipeline
(``Trainer.data``, the jittered pairs), in interleaved rounds (median printed):

- *reference*: one optimisation step written the way the reference code
  (``pix2pix_model.py``) does it: eager fp32, plain PyTorch layers, contiguous (NCHW)
  tensors, D on the fake and on the real pair in two calls, D frozen
  (``requires_grad=False``) while G's loss is backpropagated, ``torch.optim.Adam`` with
  its defaults;
- *engine*: :meth:`geo_pix2pix.train.trainer.Trainer.step`, inside
  :func:`geo_pix2pix.heap.kept_heap` as :meth:`~geo_pix2pix.train.trainer.Trainer.fit` runs it,
  as ``geo-pix2pix train`` runs it (mixed precision: bfloat16 on a CPU that has it in
  hardware) and as ``train --no-amp`` runs it (float32 throughout).

Models: ``default`` (the shipped model's shapes: G width 24, D width 32, instance
norm, batch 4), ``g32`` and ``g64`` (the same recipe with G and D 32 or 64 wide: the
wider generators the model-quality work may choose) and ``paper`` (G width 64, D width
64, BatchNorm, batch 1).

It prints the CPU and its flags, the work of one step (forward and backward, counted by
``torch.utils.flop_counter``), the GFLOP/s each way achieves and its share of the
machine's matrix-product rate of the step's precision (fp32, or bf16 for the mixed
step), measured in the same rounds: how much room a faster step could have on this
machine at all. ``--threads 1`` measures one core.

    python benchmarks/train_throughput.py [--models default paper] [--seconds 20] [--rounds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from geo_pix2pix.heap import kept_heap
from geo_pix2pix.model import devices
from geo_pix2pix.model.networks import DiscriminatorConfig, GeneratorConfig
from geo_pix2pix.train.data import PairSource
from geo_pix2pix.train.trainer import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_throughput import ReferenceUNet, matmul_gflops, rate  # noqa: E402

SETUPS = {
    "default": (GeneratorConfig(base_width=24, norm="instance"),
                DiscriminatorConfig(base_width=32, norm="instance"), 4),
    "g32": (GeneratorConfig(base_width=32, norm="instance"), DiscriminatorConfig(base_width=32, norm="instance"), 4),
    "g64": (GeneratorConfig(base_width=64, norm="instance"), DiscriminatorConfig(base_width=64, norm="instance"), 4),
    "paper": (GeneratorConfig(), DiscriminatorConfig(), 1),
}


class RandomPairs(PairSource):
    """In-memory random 300 × 300 pairs (the decode cost is not what is measured)."""

    def __init__(self, n: int = 16) -> None:
        super().__init__()
        self.names = [f"{i}.png" for i in range(n)]
        rng = np.random.default_rng(0)
        self.pairs = [tuple(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8) for _ in range(2)) for _ in range(n)]

    def _load(self, index: int):
        return self.pairs[index]


class ReferenceStep:
    """The reference recipe's optimisation step on copies of the trainer's networks."""

    def __init__(self, trainer: Trainer) -> None:
        # plain layers, on copies of the weights
        self.G = ReferenceUNet(copy.deepcopy(trainer.G), dropout=True).train()
        self.D = copy.deepcopy(trainer.D).train()
        c = trainer.config
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=c.lr, betas=(c.beta1, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=c.lr, betas=(c.beta1, 0.999))
        self.bce, self.data, self.batch = nn.BCEWithLogitsLoss(), trainer.data, c.batch_size

    def __call__(self) -> None:
        map_, real = self.data.sample(self.batch)
        fake = self.G(map_)
        self.D.requires_grad_(True)
        self.opt_d.zero_grad()
        pred_fake = self.D(map_, fake.detach())
        pred_real = self.D(map_, real)
        loss_d = 0.5 * (self.bce(pred_fake, torch.zeros_like(pred_fake))
                        + self.bce(pred_real, torch.ones_like(pred_real)))
        loss_d.backward()
        self.opt_d.step()
        self.D.requires_grad_(False)
        self.opt_g.zero_grad()
        pred_fake = self.D(map_, fake)
        loss_g = self.bce(pred_fake, torch.ones_like(pred_fake)) + 100 * (fake - real).abs().mean()
        loss_g.backward()
        self.opt_g.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["default", "paper"], choices=sorted(SETUPS))
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch threads (default: PyTorch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {devices.cpu_description()}; bfloat16: {devices.cpu_bf16_kind() or 'emulated'}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds × {args.seconds:g} s per figure (median shown)")
    for name in args.models:
        gconf, dconf, batch = SETUPS[name]
        with tempfile.TemporaryDirectory() as tmp:
            trainers = []
            for amp in (True, False):
                torch.manual_seed(0)
                trainers.append(Trainer(RandomPairs(), Path(tmp) / str(amp),
                                        TrainConfig(batch_size=batch, load_size=(286, 286), val_fraction=0.0,
                                                    amp=amp), gconf, dconf, device="cpu"))
            trainer, fp32 = trainers
            ref = ReferenceStep(trainer)
            with FlopCounterMode(display=False) as counter:
                ref()
            gflop = counter.get_total_flops() / 1e9
            mixed = trainer.amp_dtype is not None
            label = f"Trainer.step ({'bfloat16 mixed' if mixed else 'float32'})"
            rates: dict[str, list[float]] = {"reference recipe": [], label: []}
            if mixed:
                rates["Trainer.step (float32, --no-amp)"] = []
            peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for _ in range(args.rounds):
                peaks["fp32"].append(matmul_gflops(args.seconds / 4))
                peaks["bf16"].append(matmul_gflops(args.seconds / 4, torch.bfloat16))
                rates["reference recipe"].append(rate(ref, 1, args.seconds))
                with kept_heap():  # as Trainer.fit runs its steps
                    rates[label].append(rate(trainer.step, 1, args.seconds))
                    if mixed:
                        rates["Trainer.step (float32, --no-amp)"].append(rate(fp32.step, 1, args.seconds))
        r_ref = statistics.median(rates["reference recipe"])
        peak = {k: statistics.median(v) for k, v in peaks.items()}
        print(f"\n{name}: G width {gconf.base_width}, D width {dconf.base_width}, {gconf.norm} norm, batch {batch}; "
              f"{gflop:.1f} GFLOP per step; 2048² matrix product: fp32 {peak['fp32']:.0f}, "
              f"bf16 {peak['bf16']:.0f} GFLOP/s")
        for way, rs in rates.items():
            r = statistics.median(rs)
            precision = "bf16" if "bfloat16" in way else "fp32"
            print(f"  {way:34s} {r:6.3f} steps/s  ×{r / r_ref:4.2f}  {r * gflop:6.1f} GFLOP/s "
                  f"({100 * r * gflop / peak[precision]:5.1f} % of {precision} matmul)   "
                  f"rounds: {', '.join(f'{x:.3f}' for x in rs)}")
        if mixed:
            f32 = statistics.median(rates["Trainer.step (float32, --no-amp)"])
            print(f"  bfloat16 mixed step: ×{statistics.median(rates[label]) / f32:.2f} the float32 step")

if __name__ == "__main__":
    main()
