"""``geo-pix2pix train``: a pix2pix model on paired map/aerial data."""

from __future__ import annotations

from pathlib import Path

import click

from .common import keeps_heap, pair_source
from .options import FRACTION, GROUND_RESOLUTION, Number, count, device_opt
from .signals import check_interrupted


@click.command()
@click.argument("data", type=click.Path())
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--layout", type=click.Choice(["side-by-side", "folders", "rasters"]), default="side-by-side",
              show_default=True,
              help="side-by-side: pix2pix pairs in one image; folders: DATA/map and DATA/aerial; "
                   "rasters: DATA is the map raster, --aerial the aerial raster.")
@click.option("--direction", type=click.Choice(["AtoB", "BtoA"]), default="BtoA", show_default=True,
              help="side-by-side only: BtoA = right half is the map (the pix2pix maps dataset).")
@click.option("--aerial", type=click.Path(), default=None, help="rasters layout: the aerial raster.")
@click.option("--preset", type=click.Choice(["default", "paper"]), default=None,
              help="A whole recipe: default = the shipped model's (hours on a CPU), paper = the paper's "
                   "(days on a CPU); options given as well override it.")
@click.option("--steps", type=count(), default=200_000, show_default=True, help="Total training steps.")
@click.option("--decay-steps", type=count(0), default=0, show_default=True,
              help="Last N steps: learning rate decays linearly to zero.")
@click.option("--batch-size", "-b", type=count(hint="the paper uses 1"), default=1, show_default=True)
@click.option("--width", type=count(hint="the paper's is 64"), default=64, show_default=True,
              help="Generator base width (64 = paper).")
@click.option("--d-width", type=count(hint="the paper's is 64"), default=64, show_default=True,
              help="Discriminator base width.")
@click.option("--d-scales", type=count(1, 4, hint="1 is the paper's single PatchGAN, pix2pixHD uses 2"), default=1,
              show_default=True,
              help="Discriminators at full, half, quarter… resolution (pix2pixHD): the coarser ones judge "
                   "whole blocks and the street layout.")
@click.option("--spectral-norm/--no-spectral-norm", default=False, show_default=True,
              help="Spectral normalisation of the discriminator's convolutions (SNGAN; pairs with --gan-loss hinge).")
@click.option("--gan-loss", type=click.Choice(["bce", "hinge"]), default="bce", show_default=True,
              help="bce = the paper's cross-entropy GAN loss; hinge = the hinge loss of SNGAN and SAGAN.")
@click.option("--upsample", type=click.Choice(["deconv", "resize"]), default="deconv", show_default=True,
              help="Generator decoder layers: deconv = the paper's transposed convolutions; resize = "
                   "nearest-neighbour upsampling and a 3 × 3 convolution, which cannot paint a checkerboard.")
@click.option("--norm", type=click.Choice(["batch", "instance"]), default="instance", show_default=True,
              help="instance = the paper's test-time per-tile statistics, batch-independent.")
@click.option("--load-size", type=str, default="286", show_default=True,
              help="Jitter resize: N or LOW-HIGH (random size per sample).")
@click.option("--lr", type=Number(float, 0, lo_open=True, hint="the paper uses 0.0002"), default=2e-4,
              show_default=True)
@click.option("--l1-weight", type=Number(float, 0, hint="the paper uses 100"), default=100.0, show_default=True)
@click.option("--feature-matching", type=Number(float, 0, hint="pix2pixHD uses 10; 0 turns it off"), default=0.0,
              show_default=True,
              help="Weight of pix2pixHD's feature-matching loss: the generated pair's discriminator features "
                   "pulled towards the real pair's.")
@click.option("--augment", type=click.Choice(["mirror", "dihedral", "none"]), default="mirror", show_default=True,
              help="mirror: the paper's random left-right mirror; dihedral: also up-down mirrors and 90° turns.")
@click.option("--ema", type=Number(float, 0, 1, hi_open=True, hint="e.g. 0.999; 0 turns it off"), default=0.0,
              show_default=True,
              help="Ship and validate an exponential moving average of the generator's weights with this decay.")
@click.option("--val-fraction", type=FRACTION, default=0.1, show_default=True)
@click.option("--split-by", type=click.Choice(["region", "hash"]), default="region", show_default=True,
              help="Validation tiles: region = whole neighbourhoods held out (like unseen ground); "
                   "hash = a hash of the file names.")
@click.option("--ground-resolution", type=GROUND_RESOLUTION, default=None,
              help="Metres per pixel of the training crops, stored in the checkpoint.")
@click.option("--checkpoint-every", type=count(hint="the default is 1000 steps"), default=1000, show_default=True)
@click.option("--seed", type=count(0, 2**63 - 1), default=0, show_default=True)
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue from a checkpoint (weights, optimisers, step, RNG) with its recipe; "
                   "options given as well override it.")
@click.option("--amp/--no-amp", default=True, show_default=True,
              help="Mixed precision: float16 on CUDA, bfloat16 on CPUs that have it in hardware "
                   "(AVX512-BF16, AMX; about 1.5× faster there). --no-amp: float32 throughout.")
@device_opt
@click.pass_context
@keeps_heap
def train(ctx, data, out_dir, layout, direction, aerial, preset, resume, device, **options):
    """Train a pix2pix model on paired map/aerial data; checkpoints go to OUT_DIR.

    Under torchrun (torchrun --nproc_per_node N -m geo_pix2pix train ...) it trains
    data-parallel on N processes; rank 0 writes the checkpoints (docs/scaling.md).
    """
    from ..errors import OptionError, OutputExistsError
    from ..model.networks import DiscriminatorConfig, GeneratorConfig
    from ..train.trainer import TrainConfig, Trainer

    last = Path(out_dir) / "last.pt"
    if last.exists() and not (resume and Path(resume).exists() and last.samefile(resume)):
        # A new run would overwrite the checkpoints of the one already there.
        raise OutputExistsError(f"OUT_DIR {out_dir!r} holds another training run ({last}): pass --resume "
                                f"{last} to continue it, or choose another OUT_DIR")
    o = _train_recipe(ctx, preset, resume, options)
    steps, decay_steps, batch_size, load_size = o["steps"], o["decay_steps"], o["batch_size"], o["load_size"]
    width, d_width, norm, ground_resolution = o["width"], o["d_width"], o["norm"], o["ground_resolution"]
    try:
        lo, _, hi = load_size.partition("-")
        sizes = (int(lo), int(hi or lo))
    except ValueError:
        sizes = (0, -1)
    if not 1 <= sizes[0] <= sizes[1]:
        raise OptionError(f"--load-size {load_size!r} must be N or LOW-HIGH with LOW ≤ HIGH, e.g. 286 or 256-300")
    if decay_steps > steps:
        raise OptionError(f"--decay-steps {decay_steps} must be at most --steps {steps}: the learning rate decays "
                          "over the last --decay-steps of the run")
    gconf = GeneratorConfig(base_width=width, norm=norm, upsample=o["upsample"])
    dconf = DiscriminatorConfig(base_width=d_width, norm=norm, scales=o["d_scales"], spectral_norm=o["spectral_norm"])
    _check_train_memory(gconf, dconf, batch_size, sizes[1], device)
    source = pair_source(layout, data, direction, aerial)
    if ground_resolution is None:
        ground_resolution = getattr(source, "ground_resolution", None)
    cfg = TrainConfig(steps=steps, decay_steps=decay_steps, batch_size=batch_size, lr=o["lr"],
                      l1_weight=o["l1_weight"], feature_matching=o["feature_matching"], gan_loss=o["gan_loss"],
                      load_size=sizes,
                      augment=o["augment"], ema=o["ema"],
                      val_fraction=o["val_fraction"], split_by=o["split_by"], seed=o["seed"],
                      checkpoint_every=o["checkpoint_every"], ground_resolution=ground_resolution, amp=o["amp"])
    trainer = Trainer(source, out_dir, cfg, gconf, dconf, device, provenance={"data": str(data), "layout": layout})
    from tqdm import tqdm

    try:
        if resume:
            trainer.resume(resume)
        with tqdm(total=steps, initial=trainer.state.step, desc="train", unit="step",
                  disable=(ctx.meta.get("quiet") or not trainer.main) or None, dynamic_ncols=True) as bar:
            def progress(step: int, rec: dict) -> None:
                check_interrupted()
                bar.update(step - bar.n)
                bar.set_postfix(d=rec.get("loss_d"), g=rec.get("loss_g_gan"), l1=rec.get("loss_g_l1"),
                                refresh=False)

            try:
                final = trainer.fit(progress)
            except KeyboardInterrupt:
                if trainer.main:
                    ctx.meta["interrupted_note"] = _saved_run_note(ctx, last)
                raise
    finally:
        trainer.close()
    if trainer.main:
        click.echo(f"wrote {final} (step {trainer.state.step})", err=True)


def _train_recipe(ctx: click.Context, preset: str | None, resume: str | None, options: dict) -> dict:
    """The run's options: those given on the command line, then the resumed checkpoint's
    recipe (or the preset), then the defaults. Says which of the checkpoint's it overrides."""
    from click.core import ParameterSource

    from ..model.checkpoints import load_checkpoint
    from ..train.trainer import PRESETS, checkpoint_recipe

    given = {k for k in options if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    if resume:
        base, origin = checkpoint_recipe(load_checkpoint(resume)), resume
    else:
        base, origin = PRESETS.get(preset, {}), f"--preset {preset}"
    o = dict(options)
    changed = []
    for name, value in base.items():
        if name not in given:
            o[name] = value
        elif value != o[name]:
            changed.append(f"--{name.replace('_', '-')} {o[name]} (was {value})")
    if resume and not ctx.meta.get("quiet"):
        click.echo(f"continuing {origin}'s recipe" + (f", overriding {', '.join(changed)}" if changed else ""),
                   err=True)
    return o


def _check_train_memory(gconf, dconf, batch_size: int, load_size: int, device: str) -> None:
    """Refuse, before anything is allocated, a run whose networks and batch cannot fit."""
    from ..model.devices import resolve_device
    from ..model.memory import check_memory, meta_module, train_bytes
    from ..model.networks import Discriminator, Generator

    g, d = meta_module(lambda: Generator(gconf)), meta_module(lambda: Discriminator(dconf))
    need = train_bytes(g, d, batch_size, 256, load_size)
    check_memory(need, f"training with --width {gconf.base_width} --d-width {dconf.base_width} --batch-size "
                       f"{batch_size} --load-size {load_size}",
                 "lower --batch-size (the paper uses 1) or the widths (the paper's are 64)",
                 resolve_device(device))


def _saved_run_note(ctx: click.Context, last: Path) -> str:
    """What an interrupted train says: where the run was saved, and the command that continues it."""
    import shlex

    import torch
    from click.core import ParameterSource

    try:
        step = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["training"]["step"]
    except Exception:  # not saved (interrupted before the first step, or while saving)
        return "no step was saved; existing outputs left untouched."
    words, options = ["geo-pix2pix", ctx.info_name], []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name == "resume" or ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif param.is_flag:
            flag = param.opts[0] if value else (param.secondary_opts or [None])[0]
            options += [flag] if flag else []
        else:
            options += [max(param.opts, key=len), str(value)]
    command = " ".join(shlex.quote(w) for w in [*words, *options, "--resume", str(last)])
    return f"the run was saved at step {step} in {last}; continue it with: {command}"
