"""Training: the pix2pix recipe (conditional GAN loss + λ·L1, Adam 2e-4, β1 0.5).

One training step, as in the paper and the reference code:

1. D step: minimise BCE(D(map, real), 1) + BCE(D(map, G(map)), 0), halved
   ("we divide the objective by 2 while optimizing D").
2. G step: minimise BCE(D(map, G(map)), 1) + λ · |G(map) − real|₁ with λ = 100.

Opt-in variant (issue 19), pix2pixHD's (Wang et al., CVPR 2018, section 3.2): with a
multi-scale discriminator (``DiscriminatorConfig.scales`` > 1) or a feature-matching
weight (``TrainConfig.feature_matching`` > 0), both GAN losses are averaged over the
scales and G also minimises λ_FM · |D_k(map, G(map)) − D_k(map, real)|₁ averaged over
D's intermediate layers k and the scales. The defaults run the paper's step unchanged.

``TrainConfig.gan_loss = "hinge"`` (issue 19, with spectral normalisation in mind: Miyato et
al., ICLR 2018) replaces the BCE terms: D minimises ½ (relu(1 − D(real)) + relu(1 + D(fake))),
G minimises −D(fake); everything else in the step stays.

Learning rate: constant for ``steps - decay_steps`` steps, then linearly to zero over
``decay_steps`` (the reference code's ``n_epochs``/``n_epochs_decay``, in steps).

Everything a resumed run needs to continue exactly is in the checkpoint: both
networks, both optimisers, the step, the data sampler's RNG and torch's global RNG
(dropout). Metrics go to ``metrics.jsonl`` in the run folder, sample grids
(map | generated | real) to ``samples/``.

Under ``torchrun`` the trainer runs data-parallel (:mod:`geo_pix2pix.distributed.ddp`): both networks
in DistributedDataParallel, each process on its own share of the tiles, rank 0 writing
checkpoints (of the unwrapped networks: they resume in one process), metrics and samples.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..distributed import ddp
from ..errors import CheckpointError, OptionError
from ..model.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from ..model.devices import autocast, autocast_dtype, resolve_device
from ..model.networks import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from .data import AUGMENTS, Jitter, JitteredPairs, PairSource, fixed_pairs, to_uint8
from .regions import SPLITS_BY, split_by

log = logging.getLogger(__name__)

_TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])

__all__ = ["PRESETS", "TrainConfig", "Trainer", "checkpoint_recipe"]

#: ``geo-pix2pix train --preset NAME``: whole recipes, in the CLI's option names; any
#: option given on the command line overrides its preset value.
PRESETS: dict[str, dict] = {
    # The shipped default model's recipe (docs/model-card.md, "Version 3", with its training
    # time and CPU): batch 4, base widths 32/32, an EMA of the generator, 12,000 steps at a
    # constant learning rate (the colours and sharpness that version 2 got from its decay
    # phase came with more steps instead, without the decay's loss of L1 and SSIM).
    "default": dict(width=32, d_width=32, norm="instance", batch_size=4, load_size="256-300",
                    steps=12_000, decay_steps=0, ema=0.999, augment="mirror", ground_resolution=2.12),
    # The paper's maps recipe: 200 epochs of the 1,096 training tiles at batch 1, the
    # learning rate decaying over the last 100 (days on a CPU: a GPU job).
    "paper": dict(width=64, d_width=64, norm="batch", batch_size=1, load_size="286",
                  steps=219_200, decay_steps=109_600, augment="mirror", ema=0.0),
}

# The CLI options a checkpoint's recipe holds, by their TrainConfig field.
_RECIPE_FIELDS = ("steps", "decay_steps", "batch_size", "lr", "l1_weight", "augment", "ema",
                  "val_fraction", "split_by", "seed", "checkpoint_every", "amp", "feature_matching", "gan_loss")
#: TrainConfig.gan_loss values
GAN_LOSSES = ("bce", "hinge")


@dataclass
class TrainConfig:
    steps: int = 200_000  # total optimisation steps, decay included
    decay_steps: int = 0  # last N steps: learning rate decays linearly to 0
    batch_size: int = 1  # the paper uses 1 for maps
    lr: float = 2e-4
    beta1: float = 0.5
    l1_weight: float = 100.0  # λ in the paper
    #: weight of pix2pixHD's feature-matching loss on D's intermediate layers (pix2pixHD
    #: uses 10; 0: none). Non-zero, or a discriminator of several scales, selects the
    #: pix2pixHD variant of the step (module docstring)
    feature_matching: float = 0.0
    #: "bce": the paper's cross-entropy GAN loss; "hinge": the hinge loss (module docstring)
    gan_loss: str = "bce"
    load_size: tuple[int, int] = (286, 286)  # jitter: resize to a size in this range
    crop_size: int = 256
    #: "mirror": the paper's random left-right mirror; "dihedral": also up-down mirrors and
    #: 90° turns (8 orientations; sun shadows then fall in any direction); "none"
    augment: str = "mirror"
    val_fraction: float = 0.1
    split_by: str = "region"  # "region": whole neighbourhoods held out (regions.py); "hash": file names
    #: decay of the exponential moving average of the generator's weights that checkpoints
    #: ship and validation scores (0: the raw weights); GAN generators average out the
    #: step-to-step oscillation of adversarial training this way
    ema: float = 0.0
    seed: int = 0
    checkpoint_every: int = 1000  # steps
    checkpoint_minutes: float = 5.0  # and at least this often in wall time
    sample_every: int = 1000
    log_every: int = 50
    val_every: int = 1000
    val_tiles: int = 48  # validation tiles scored at each val_every
    ground_resolution: float | None = None  # metres per pixel of the crops, if known
    #: mixed precision: float16 autocast on CUDA, bfloat16 on CPUs that multiply it in
    #: hardware (devices.cpu_has_native_bf16); weights, gradients, Adam and losses stay
    #: float32. Its speed-up, by CPU: docs/performance.md, "Training steps/s".
    amp: bool = True

    def __post_init__(self) -> None:
        """The same rules as the command line's, for Python callers (one line each)."""
        def need(ok: bool, option: str, value, rule: str) -> None:
            if not ok:
                raise OptionError(f"{option} {value!r} must be {rule}")

        finite = math.isfinite
        need(self.steps >= 1, "--steps", self.steps, "at least 1")
        need(0 <= self.decay_steps <= self.steps, "--decay-steps", self.decay_steps,
             f"between 0 and --steps {self.steps}")
        need(self.batch_size >= 1, "--batch-size", self.batch_size, "at least 1 (the paper uses 1)")
        need(finite(self.lr) and self.lr > 0, "--lr", self.lr, "a positive number (the paper uses 0.0002)")
        need(finite(self.beta1) and 0 <= self.beta1 < 1, "beta1", self.beta1, "in [0, 1) (the paper uses 0.5)")
        need(finite(self.l1_weight) and self.l1_weight >= 0, "--l1-weight", self.l1_weight,
             "a number ≥ 0 (the paper uses 100)")
        need(finite(self.feature_matching) and self.feature_matching >= 0, "--feature-matching",
             self.feature_matching, "a number ≥ 0 (pix2pixHD uses 10; 0 turns it off)")
        need(self.checkpoint_every >= 1, "--checkpoint-every", self.checkpoint_every, "at least 1 step")
        need(self.log_every >= 1, "log_every", self.log_every, "at least 1 step")
        need(self.val_every >= 0 and self.sample_every >= 0, "val_every/sample_every",
             (self.val_every, self.sample_every), "0 (off) or more steps")
        need(finite(self.val_fraction) and 0 <= self.val_fraction < 1, "--val-fraction", self.val_fraction,
             "in [0, 1)")
        need(finite(self.ema) and 0 <= self.ema < 1, "--ema", self.ema, "in [0, 1), e.g. 0.999 (0 turns it off)")
        need(self.gan_loss in GAN_LOSSES, "--gan-loss", self.gan_loss, f"one of {', '.join(GAN_LOSSES)}")
        need(self.split_by in SPLITS_BY, "--split-by", self.split_by, f"one of {', '.join(SPLITS_BY)}")
        need(self.augment in AUGMENTS, "--augment", self.augment, f"one of {', '.join(AUGMENTS)}")
        lo, hi = self.load_size
        need(lo <= hi, "--load-size", f"{lo}-{hi}", "N or LOW-HIGH with LOW ≤ HIGH, e.g. 286 or 256-300")
        if lo < self.crop_size:  # the message JitteredPairs gives too
            raise OptionError(f"--load-size {lo} is smaller than the {self.crop_size} px training crop: give at "
                              f"least {self.crop_size} (the paper uses 286)")


@dataclass
class TrainState:
    step: int = 0
    wall_seconds: float = 0.0
    history: list = field(default_factory=list)


class Trainer:
    """Owns the networks, optimisers and data of one run folder."""

    def __init__(
        self,
        source: PairSource,
        out_dir: str | Path,
        config: TrainConfig,
        generator_config: GeneratorConfig | None = None,
        discriminator_config: DiscriminatorConfig | None = None,
        device: str | None = None,
        provenance: dict | None = None,
    ) -> None:
        self.config = config
        self.out = Path(out_dir)
        #: the torchrun job this trainer is part of (None: a single process)
        self.dist = ddp.from_env()
        self.device = ddp.setup(self.dist, device) if self.dist else resolve_device(device)
        self.source = source
        train_idx, val_idx = split_by(source, config.split_by, config.val_fraction)
        self.train_idx, self.val_idx = train_idx, val_idx
        self.data = JitteredPairs(source, ddp.shard(train_idx, self.dist),
                                  Jitter(config.load_size, config.crop_size, config.augment),
                                  seed=ddp.rank_seed(config.seed, self.dist))
        torch.manual_seed(config.seed)
        self.G = Generator(generator_config or GeneratorConfig()).to(self.device)
        self.D = Discriminator(discriminator_config or DiscriminatorConfig()).to(self.device)
        #: the generator that checkpoints ship and validation scores: the EMA of G, or G
        self.G_ema = (AveragedModel(self.G, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
                      if config.ema else None)
        betas = (config.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=betas, fused=self._fused_adam)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr, betas=betas, fused=self._fused_adam)
        #: the lower precision the step's convolutions run in (None: float32 throughout)
        self.amp_dtype = autocast_dtype(self.device, config.amp, cpu_bf16=True)
        # bfloat16 has float32's exponent range: only float16 needs its loss scaled.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.bce = nn.BCEWithLogitsLoss()
        self.state = TrainState()
        self.provenance = dict(provenance or {})
        # What a step runs: the networks themselves, or their DDP wrappers under torchrun
        # (self.G and self.D stay the plain networks: checkpoints, validation, samples).
        self.g_step, self.d_step = self.G, self.D
        if self.dist is not None:
            self.g_step, self.d_step = ddp.wrap(self.G, self.device), ddp.wrap(self.D, self.device)
            torch.manual_seed(ddp.rank_seed(config.seed, self.dist))  # dropout differs per rank

    @property
    def shipped(self) -> nn.Module:
        """The generator that checkpoints ship and validation scores."""
        return self.G if self.G_ema is None else self.G_ema.module

    @property
    def pix2pixhd(self) -> bool:
        """True when the step runs pix2pixHD's losses (several D scales or feature matching)."""
        return self.D.config.scales > 1 or self.config.feature_matching > 0

    @property
    def main(self) -> bool:
        """True in the process that writes (rank 0, or the only process)."""
        return self.dist is None or self.dist.main

    @property
    def world_size(self) -> int:
        return 1 if self.dist is None else self.dist.world_size

    def close(self) -> None:
        """Leave the torchrun process group, if this trainer joined one."""
        if self.dist is not None:
            ddp.teardown()

    # -- learning rate ---------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        c = self.config
        start = c.steps - c.decay_steps
        if c.decay_steps <= 0 or step < start:
            return c.lr
        return c.lr * max(0.0, 1.0 - (step - start) / c.decay_steps)

    # -- one step ---------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        c = self.config
        self.G.train()
        self.D.train()
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = self.lr_at(self.state.step)
        map_, real = (t.to(self.device, non_blocking=True) for t in self.data.sample(c.batch_size))

        with autocast(self.device, c.amp, cpu_bf16=True):
            fake = self.g_step(map_)
            if self.pix2pixhd:
                loss_d = self._loss_d_scales(map_, fake.detach(), real)
            else:
                pred_fake = self.d_step(map_, fake.detach()).float()
                pred_real = self.d_step(map_, real).float()
                loss_d = self._d_objective(pred_fake, pred_real)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_d).backward()
        self.scaler.step(self.opt_d)

        # G's loss goes through D, but D's weights get no gradient from it: freeze them
        # (as the reference code does) so that backward skips D's weight gradients, and
        # under DDP do not average anything for D.
        self.D.requires_grad_(False)
        try:
            with autocast(self.device, c.amp, cpu_bf16=True), _no_sync(self.d_step):
                loss_fm = None
                if self.pix2pixhd:
                    loss_gan, loss_fm = self._loss_g_scales(map_, fake, real)
                else:
                    loss_gan = self._g_objective(self.d_step(map_, fake).float())
                loss_l1 = (fake.float() - real).abs().mean()
                loss_g = loss_gan + c.l1_weight * loss_l1
                if loss_fm is not None:
                    loss_g = loss_g + loss_fm
            self.opt_g.zero_grad(set_to_none=True)
            self.scaler.scale(loss_g).backward()
        finally:
            self.D.requires_grad_(True)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        if self.G_ema is not None:
            self.G_ema.update_parameters(self.G)
        self.state.step += 1
        losses = {"loss_d": loss_d.item(), "loss_g_gan": loss_gan.item(), "loss_g_l1": loss_l1.item()}
        if loss_fm is not None:
            losses["loss_g_fm"] = loss_fm.item()
        return losses

    def _d_objective(self, pred_fake: torch.Tensor, pred_real: torch.Tensor) -> torch.Tensor:
        """D's loss on one PatchGAN's logits: real pairs → 1, generated pairs → 0 (or the
        hinge's margins), halved as in the paper."""
        if self.config.gan_loss == "hinge":
            return 0.5 * (torch.relu(1 - pred_real).mean() + torch.relu(1 + pred_fake).mean())
        return 0.5 * (self.bce(pred_fake, torch.zeros_like(pred_fake))
                      + self.bce(pred_real, torch.ones_like(pred_real)))

    def _g_objective(self, pred_fake: torch.Tensor) -> torch.Tensor:
        """G's GAN loss on one PatchGAN's logits for generated pairs."""
        if self.config.gan_loss == "hinge":
            return -pred_fake.mean()
        return self.bce(pred_fake, torch.ones_like(pred_fake))

    def _loss_d_scales(self, map_: torch.Tensor, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """pix2pixHD's D loss: D's objective on each scale's logits, averaged."""
        fakes = self.d_step(map_, fake, scales=True)  # through forward: DDP syncs D's gradients
        reals = self.d_step(map_, real, scales=True)
        return torch.stack([self._d_objective(f[-1].float(), r[-1].float())
                            for f, r in zip(fakes, reals, strict=True)]).mean()

    def _loss_g_scales(self, map_: torch.Tensor, fake: torch.Tensor,
                       real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pix2pixHD's G losses: the GAN loss averaged over the scales, and λ_FM times the L1
        distance of D's intermediate activations for generated and real pairs, averaged
        over the layers and the scales."""
        fakes = self.d_step(map_, fake, scales=True)
        logits = [f[-1].float() for f in fakes]
        loss_gan = torch.stack([self._g_objective(p) for p in logits]).mean()
        weight = self.config.feature_matching
        if not weight:
            return loss_gan, torch.zeros((), device=loss_gan.device)
        # The real pair's activations from D as it is now (after this step's D update), the
        # same D the generated pair's go through; pix2pixHD reuses its D pass, taken before.
        with torch.no_grad():
            reals = self.d_step(map_, real, scales=True)
        per_scale = [torch.stack([(a.float() - b.float()).abs().mean() for a, b in zip(f[:-1], r[:-1], strict=True)])
                     for f, r in zip(fakes, reals, strict=True)]  # (layers,) each
        return loss_gan, weight * torch.stack([layers.mean() for layers in per_scale]).mean()

    @property
    def _fused_adam(self) -> bool | None:
        """Adam's fused kernel where PyTorch has one (CPU, CUDA): the same update in one
        pass over each tensor instead of about ten (gain measured in ``docs/performance.md``)."""
        if self.device.type == "cuda" or (self.device.type == "cpu" and _TORCH_VERSION >= (2, 4)):
            return True  # PyTorch has a fused CPU Adam from 2.4 on
        return None

    # -- checkpoints ------------------------------------------------------------------
    def training_state(self) -> dict:
        return {
            "step": self.state.step,
            "wall_seconds": self.state.wall_seconds,
            "optimizer_g": self.opt_g.state_dict(),
            "optimizer_d": self.opt_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data_rng": self.data.rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "config": json.dumps(asdict(self.config)),
            # The checkpoint's generator is the EMA: the raw weights continue training.
            **({"generator_raw": self.G.state_dict(), "ema_updates": int(self.G_ema.n_averaged)}
               if self.G_ema is not None else {}),
        }

    def provenance_now(self) -> dict:
        p = dict(self.provenance)
        p.update(
            steps=self.state.step,
            samples_seen=self.state.step * self.config.batch_size * self.world_size,
            processes=self.world_size,
            precision={torch.float16: "float16 mixed", torch.bfloat16: "bfloat16 mixed"}.get(
                self.amp_dtype, "float32"),
            wall_seconds=round(self.state.wall_seconds, 1),
            recipe=json.dumps({k: v for k, v in asdict(self.config).items()
                               if k in ("batch_size", "lr", "beta1", "l1_weight", "load_size",
                                        "crop_size", "augment", "ema", "split_by", "steps",
                                        "decay_steps", "seed")
                               # the variant's only: the paper's recipes are recorded as they were
                               or (k == "feature_matching" and v)}),
            train_tiles=len(self.train_idx),
            val_tiles=len(self.val_idx),
            val_fraction=self.config.val_fraction,
        )
        return p

    def save(self, path: Path, *, full: bool = True) -> None:
        """``full``: everything a resumed run needs (last.pt); else the generator alone, which
        is all that render needs (model.pt), so no weights are stored twice."""
        if not self.main:
            return  # rank 0 writes; every rank holds the same weights
        save_checkpoint(
            path, self.shipped, discriminator=self.D if full else None,
            ground_resolution=self.config.ground_resolution,
            provenance=self.provenance_now(),
            training=self.training_state() if full else None,
        )

    def resume(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path)
        if ckpt.generator_config != self.G.config:
            raise CheckpointError(
                f"--resume {str(path)!r}: its generator is {ckpt.generator_config} but this run "
                f"builds {self.G.config}: pass the same --width/--norm/--upsample or start a new run"
            )
        shipped = ckpt.build_generator().state_dict()
        t = ckpt.training
        raw = t.get("generator_raw") if t is not None else None
        self.G.load_state_dict(raw if raw is not None else shipped)
        if self.G_ema is not None:
            # A run without EMA before: the average starts from the weights trained so far.
            self.G_ema.module.load_state_dict(shipped)
            self.G_ema.n_averaged.fill_(int(t.get("ema_updates", 1)) if t is not None else 1)
        d = ckpt.build_discriminator()
        if d is None:
            raise CheckpointError(
                f"--resume {str(path)!r} has no discriminator matching {self.D.config}: "
                "resume from the run's last.pt (model.pt holds the generator alone)"
            )
        if d.config != self.D.config:
            raise CheckpointError(
                f"--resume {str(path)!r}: its discriminator is {d.config} but this run builds {self.D.config}: "
                "pass the same --d-width/--d-scales/--spectral-norm or start a new run"
            )
        self.D.load_state_dict(d.state_dict())
        if t is None:  # a slim checkpoint (e.g. the shipped default model): weights only
            log.warning("%s holds no optimiser state: Adam restarts from zero moments", path)
            self.state.step = int(ckpt.provenance.get("steps", 0))
            self.state.wall_seconds = float(ckpt.provenance.get("wall_seconds", 0.0))
            return
        for opt, key in ((self.opt_g, "optimizer_g"), (self.opt_d, "optimizer_d")):
            # The kernel is this machine's choice, not the checkpoint's; set before loading,
            # because loading places Adam's step counters by the saved groups' "fused" flag.
            state = dict(t[key])
            state["param_groups"] = [{**g, "fused": self._fused_adam, "foreach": None} for g in state["param_groups"]]
            opt.load_state_dict(state)
        if t.get("scaler") and self.scaler.is_enabled():  # a float32 or bfloat16 run saved none
            self.scaler.load_state_dict(t["scaler"])
        self.data.rng.set_state(t["data_rng"])
        torch.set_rng_state(t["torch_rng"])
        self.state.step = int(t["step"])
        self.state.wall_seconds = float(t["wall_seconds"])
        if not self.main:
            # The checkpoint holds rank 0's random streams; the others derive theirs.
            seed = ddp.rank_seed(self.config.seed, self.dist, self.state.step)
            self.data.rng.manual_seed(seed)
            torch.manual_seed(seed)

    # -- looking at progress ----------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if not self.val_idx:
            return {}
        from ..evaluate.metrics import sharpness

        G = self.shipped.eval()
        maps, reals = fixed_pairs(self.source, self.val_idx[: self.config.val_tiles], self.config.crop_size)
        fakes = torch.cat([G(maps[i : i + 8].to(self.device)).float().cpu()
                           for i in range(0, len(maps), 8)])
        l1 = ((fakes - reals).abs().mean() / 2).item()  # on a 0–1 scale
        sharp = sharpness(fakes) / max(sharpness(reals), 1e-8)
        return {"val_l1": round(l1, 5), "val_sharpness_ratio": round(sharp, 4)}

    @torch.no_grad()
    def save_samples(self, n: int = 4) -> Path | None:
        from PIL import Image

        idx = self.val_idx[:n] or self.train_idx[:n]
        maps, reals = fixed_pairs(self.source, idx, self.config.crop_size)
        fakes = self.shipped.eval()(maps.to(self.device)).float().cpu()
        rows = [np.concatenate([to_uint8(m), to_uint8(f), to_uint8(r)], axis=1)
                for m, f, r in zip(maps, fakes, reals, strict=True)]
        path = self.out / "samples" / f"step{self.state.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
        return path

    # -- the loop ---------------------------------------------------------------------
    def fit(self, progress: Callable[[int, dict], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Path:
        """Run steps up to ``config.steps``, with checkpoints, metrics and samples; returns
        the final (slim) checkpoint's path."""
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        last = self.out / "last.pt"
        metrics = (self.out / "metrics.jsonl").open("a") if self.main else None
        t_ckpt = time.monotonic()
        t_log, step_log = time.monotonic(), self.state.step
        running: dict[str, float] = {}
        try:
            while self.state.step < c.steps:
                if should_stop is not None and should_stop():
                    break
                t0 = time.monotonic()
                losses = self.step()
                self.state.wall_seconds += time.monotonic() - t0
                for k, v in losses.items():
                    running[k] = running.get(k, 0.0) + v
                s = self.state.step
                if s % c.log_every == 0 or s == c.steps:
                    n = s - step_log
                    rate = n / max(time.monotonic() - t_log, 1e-9)
                    if self.dist is not None:  # every rank reaches this step: average the losses
                        running = ddp.mean_across(running, self.device)
                    rec = {"step": s, **{k: round(v / n, 5) for k, v in running.items()},
                           "lr": self.lr_at(s), "steps_per_s": round(rate, 3),
                           "wall_seconds": round(self.state.wall_seconds, 1)}
                    if self.main and c.val_every and s % c.val_every == 0:
                        rec.update(self.validate())
                    if metrics is not None:
                        metrics.write(json.dumps(rec) + "\n")
                        metrics.flush()
                    if progress is not None:
                        progress(s, rec)
                    running, t_log, step_log = {}, time.monotonic(), s
                elif progress is not None:  # every step, so that a progress bar moves from the first
                    progress(s, losses)
                if self.main and c.sample_every and s % c.sample_every == 0:
                    self.save_samples()
                if (s % c.checkpoint_every == 0
                        or time.monotonic() - t_ckpt > 60 * c.checkpoint_minutes):
                    self.save(last)
                    t_ckpt = time.monotonic()
        finally:
            if metrics is not None:
                metrics.close()
            self.save(last)  # also on Ctrl-C: the run resumes from here
        final = self.out / "model.pt"
        self.save(final, full=False)
        if self.dist is not None:
            ddp.barrier()  # the other ranks end when rank 0's checkpoints are written
        return final


def checkpoint_recipe(ckpt: Checkpoint) -> dict:
    """The recipe a checkpoint was trained with, in the CLI's option names (what
    ``--resume`` continues unless told otherwise)."""
    cfg = json.loads((ckpt.training or {}).get("config") or ckpt.provenance.get("recipe") or "{}")
    # Runs written before these options existed mirrored (or not) and split by file name.
    cfg.setdefault("augment", "mirror" if cfg.get("flip", True) else "none")
    cfg.setdefault("split_by", "hash")
    recipe = {k: cfg[k] for k in _RECIPE_FIELDS if k in cfg}
    if "load_size" in cfg:
        lo, hi = cfg["load_size"]
        recipe["load_size"] = str(lo) if lo == hi else f"{lo}-{hi}"
    recipe.update(width=ckpt.generator_config.base_width, norm=ckpt.generator_config.norm,
                  upsample=ckpt.generator_config.upsample)
    if ckpt.discriminator_config is not None:
        recipe["d_width"] = ckpt.discriminator_config.base_width
        recipe["d_scales"] = ckpt.discriminator_config.scales
        recipe["spectral_norm"] = ckpt.discriminator_config.spectral_norm
    if ckpt.ground_resolution is not None:
        recipe["ground_resolution"] = ckpt.ground_resolution
    return recipe


def _no_sync(module: nn.Module):
    """``module.no_sync()`` for a DDP wrapper; a no-op context for a plain module."""
    from contextlib import nullcontext

    return module.no_sync() if hasattr(module, "no_sync") else nullcontext()

