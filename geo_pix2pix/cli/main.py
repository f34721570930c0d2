"""The ``geo-pix2pix`` command line: a thin click layer over the library.

Each command resolves its arguments and calls one library function; heavy modules are
imported inside the commands so ``geo-pix2pix --help`` stays fast. Errors the user can
fix are printed as one line (``Error: …``) with exit code 1; ``-v`` adds tracebacks.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import time
import warnings
from pathlib import Path

import click

from .._version import __version__
from ..errors import GeoPix2PixError
from .options import (
    Number,
    batch_opt,
    count,
    device_opt,
    overlap_opt,
    overwrite_opt,
    precision_opt,
    scheduler_opt,
    weights_opt,
)

log = logging.getLogger("geo_pix2pix")


#: signal → (exit code, the word that starts the message); SIGHUP: the terminal was closed
_SIGNALS = {signal.SIGINT: (130, "Interrupted"), signal.SIGTERM: (143, "Terminated")}
if hasattr(signal, "SIGHUP"):  # not on Windows
    _SIGNALS[signal.SIGHUP] = (129, "Hung up")


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread on SIGINT, SIGTERM or SIGHUP so that cleanup (temporary files) runs."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signum


#: signals received during this command: an interruption raised where Python drops
#: exceptions (a garbage-collector callback, __del__) is raised again at the next progress update
_received: list[int] = []


def _on_signal(signum, frame):  # pragma: no cover - exercised by subprocess tests
    _received.append(signum)
    raise Interrupted(signum)


def _check_interrupted() -> None:
    if _received:
        raise Interrupted(_received[0])


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (a ``KeyboardInterrupt``): the
    same cleanup runs for all three. Called before any heavy import (torch), so that a
    signal during start-up is a clean exit too."""
    _received.clear()
    signal.signal(signal.SIGTERM, _on_signal)
    # nohup starts the program with SIGHUP ignored: keep it so.
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _on_signal)
    # A shell starts background jobs with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: handle it anyway, so `kill -INT` stops a render cleanly there too.
    signal.signal(signal.SIGINT, _on_signal)


def _write_line(message: str) -> None:
    """A line on stderr above the progress bar, not into it (tqdm.write clears and redraws it)."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        click.echo(message, err=True)


def _say(message: str) -> None:
    try:
        _write_line(message)
    except OSError:  # a hung-up terminal fails writes (EIO): the exit code still tells
        pass


class _LineHandler(logging.Handler):
    """Log records as ``LEVEL: message`` lines, written above the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write_line(self.format(record))
        except Exception:
            self.handleError(record)


def _ours_or_warning(record: logging.LogRecord) -> bool:
    """Other libraries' INFO and DEBUG lines (Dask logs dozens per local cluster) only with -vv."""
    return record.levelno >= logging.WARNING or record.name.split(".")[0] == "geo_pix2pix"


class Group(click.Group):
    """Turns library errors into one-line messages and signals into clean exits."""

    def main(self, *args, **kwargs):
        install_signal_handlers()
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        install_signal_handlers()  # again: CliRunner and other callers enter here
        try:
            return super().invoke(ctx)
        except GeoPix2PixError as exc:
            if ctx.meta.get("verbose"):
                raise
            _say(f"Error: {exc}")
            ctx.exit(1)
        except KeyboardInterrupt as exc:
            code, word = _SIGNALS[getattr(exc, "signum", signal.SIGINT)]
            note = ctx.meta.get("interrupted_note", "temporary files removed, existing outputs left untouched.")
            _say(f"{word}: {note}")
            ctx.exit(code)


def _setup_logging(verbose: int, quiet: bool) -> None:
    root = logging.getLogger()
    # As logging.basicConfig: a program that configured logging itself (pytest) keeps its own.
    if not root.handlers or any(isinstance(h, _LineHandler) for h in root.handlers):
        for h in [h for h in root.handlers if isinstance(h, _LineHandler)]:
            root.removeHandler(h)
        handler = _LineHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        if verbose < 2:
            handler.addFilter(_ours_or_warning)
        root.addHandler(handler)
        root.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    # Warnings (not georeferenced, resampling…) are shown once, as one line: rasterio's own
    # "no geotransform" repeats geo-pix2pix's NotGeoreferencedWarning in other words.
    warnings.filterwarnings("ignore", message="Dataset has no geotransform")
    warnings.showwarning = lambda msg, cat, *a, **k: _say(f"Warning: {msg}")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geo-pix2pix")
@click.option("-v", "--verbose", count=True,
              help="-v: tracebacks of errors and geo-pix2pix's DEBUG lines; -vv: other libraries' log lines "
                   "too (Dask, rasterio).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Synthetic aerial imagery from georeferenced map rasters (pix2pix)."""
    ctx.meta["verbose"] = verbose > 0
    ctx.meta["quiet"] = quiet
    _setup_logging(verbose, quiet)


FRACTION = Number(float, 0, 1, hi_open=True, hint="the default is 0.1")
#: the range checkpoints.GROUND_RESOLUTION_RANGE accepts (not imported: it would bring torch)
GROUND_RESOLUTION = Number(float, 1e-3, 1e5, hint="metres per pixel, e.g. 2.12")


def _kept_heap(command):
    """Run ``command`` with freed memory kept in the heap (:func:`heap.kept_heap`), restored on
    exit: the library leaves the process's allocator alone; the CLI tunes it for the user."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from ..heap import kept_heap

        with kept_heap():
            return command(*args, **kwargs)

    return run


def _progress_bar(ctx: click.Context, desc: str, unit: str = "tile"):
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit=unit, disable=ctx.meta.get("quiet") or None,
               dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        _check_interrupted()
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return bar, update


@main.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@weights_opt
@device_opt
@precision_opt
@batch_opt
@overlap_opt
@overwrite_opt
@click.option("--bands", type=str, default=None, help="Bands to read as R,G,B (1-based), e.g. 3,2,1.")
@click.option("--model-grid", is_flag=True,
              help="Write the result on the model's resolution grid instead of the input's.")
@click.option("--cog", is_flag=True, help="Write a Cloud Optimized GeoTIFF.")
@click.option("--compress", default=None, metavar="zstd|deflate|lzw|jpeg|none",
              help="GeoTIFF compression [default: zstd, level 1; deflate for readers older than GDAL 2.3].")
@click.option("--overviews/--no-overviews", default=True, show_default=True,
              help="Build internal overviews (2×, 4×, … average) in a GeoTIFF DST; skipping them saves "
                   "about 6 % of a 4096² render, for output that is only an intermediate step.")
@scheduler_opt
@click.pass_context
@_kept_heap
def render(ctx, src, dst, weights, device, precision, batch_size, overlap, overwrite, bands, model_grid, cog,
           compress, overviews, scheduler):
    """Render the map raster SRC into a synthetic aerial image DST.

    DST keeps SRC's CRS, transform, size and nodata. Use .tif for GeoTIFF output, or
    .png/.jpg for plain images.
    """
    from ..model.spec import resolve_model
    from ..render import render as render_fn

    spec = _model_spec(weights, device, precision)
    model = spec if scheduler else resolve_model(spec)  # --scheduler: each worker loads it, on its --device
    _log_model(weights, None if scheduler else model, precision,
               f"the --scheduler workers' {device}" if scheduler else None)
    bar, update = _progress_bar(ctx, "render")
    start = time.monotonic()
    with bar:
        result = render_fn(src, dst, model=model, overlap=overlap, batch_size=batch_size, client=scheduler,
                           overwrite=overwrite, progress=update, bands=bands, model_grid=model_grid,
                           cog=cog, compress=compress, overviews=overviews)
    took = time.monotonic() - start
    log.info("rendered %d tile(s) in %.1f s (%.2f tiles/s)", result.tiles_rendered, took,
             result.tiles_rendered / max(took, 1e-9))
    note = " (resampled to the model's resolution)" if result.resampled else ""
    if not ctx.meta.get("quiet"):
        click.echo(f"wrote {result.path} ({result.width}×{result.height}, "
                   f"{result.tiles_rendered}/{result.tiles_total} tiles rendered{note})", err=True)


def _model_spec(weights: str | None, device: str, precision: str):
    """The model that --weights, --device and --precision name. On CUDA the CLI switches on
    cuDNN's autotuner for this process, on the user's behalf (the model's chunk shape is fixed)."""
    from ..model.devices import resolve_device
    from ..model.spec import ModelSpec

    spec = ModelSpec.of(weights, device, precision)
    if resolve_device(spec.device).type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = True
        log.info("cuDNN autotuning on for this run (torch.backends.cudnn.benchmark)")
    return spec


def _log_model(weights: str | None, model, precision: str, device: str | None = None) -> None:
    """INFO: which model runs, in what precision, where (``model`` None: loaded elsewhere)."""
    from ..model.load import default_model_path, model_device

    name = weights or f"the default model ({default_model_path().name})"
    identity = model.identity if model is not None else ""
    where = device or str(model_device(model))
    log.info("model %s%s, %s on %s", name, f" [{identity[:12]}]" if identity else "", precision, where)


def _pair_source(layout: str, data: str, direction: str, aerial: str | None):
    """The paired map/aerial data named by --layout (shared by train and evaluate)."""
    from ..errors import OptionError
    from ..train.data import SideBySideFolder, TwoFolders

    if layout == "side-by-side":
        return SideBySideFolder(data, direction)
    if layout == "folders":
        return TwoFolders(Path(data) / "map", Path(data) / "aerial")
    if aerial is None:
        raise OptionError("--layout rasters needs --aerial AERIAL_RASTER beside the map raster DATA")
    from ..train.pairs import RasterPairs

    return RasterPairs(data, aerial)


@main.command()
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
@click.option("--norm", type=click.Choice(["batch", "instance"]), default="instance", show_default=True,
              help="instance = the paper's test-time per-tile statistics, batch-independent.")
@click.option("--load-size", type=str, default="286", show_default=True,
              help="Jitter resize: N or LOW-HIGH (random size per sample).")
@click.option("--lr", type=Number(float, 0, lo_open=True, hint="the paper uses 0.0002"), default=2e-4,
              show_default=True)
@click.option("--l1-weight", type=Number(float, 0, hint="the paper uses 100"), default=100.0, show_default=True)
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
@_kept_heap
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
    gconf, dconf = GeneratorConfig(base_width=width, norm=norm), DiscriminatorConfig(base_width=d_width, norm=norm)
    _check_train_memory(gconf, dconf, batch_size, sizes[1], device)
    source = _pair_source(layout, data, direction, aerial)
    if ground_resolution is None:
        ground_resolution = getattr(source, "ground_resolution", None)
    cfg = TrainConfig(steps=steps, decay_steps=decay_steps, batch_size=batch_size, lr=o["lr"],
                      l1_weight=o["l1_weight"], load_size=sizes, augment=o["augment"], ema=o["ema"],
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
                _check_interrupted()
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


def _check_new_file(path: str | None, overwrite: bool) -> Path | None:
    from ..errors import OutputExistsError, OutputPathError

    if path is None:
        return None
    p = Path(path)
    if not (p.parent if str(p.parent) else Path(".")).is_dir():
        raise OutputPathError(f"output folder {str(p.parent)!r} does not exist: create it first")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"output {str(p)!r} exists: pass --overwrite to replace it")
    return p


@main.command()
@click.argument("data", type=click.Path())
@click.option("--layout", type=click.Choice(["side-by-side", "folders", "rasters"]), default="side-by-side",
              show_default=True,
              help="As for train: side-by-side, folders (DATA/map, DATA/aerial) or rasters.")
@click.option("--direction", type=click.Choice(["AtoB", "BtoA"]), default="BtoA", show_default=True,
              help="side-by-side only: BtoA = right half is the map (the pix2pix maps dataset).")
@click.option("--aerial", type=click.Path(), default=None, help="rasters layout: the aerial raster.")
@click.option("--split", type=click.Choice(["val", "train", "all"]), default="val", show_default=True,
              help="Tiles scored; val is the split the trainer holds out at the same --val-fraction.")
@click.option("--val-fraction", type=FRACTION, default=0.1, show_default=True)
@click.option("--split-by", type=click.Choice(["region", "hash"]), default="region", show_default=True,
              help="As for train: region = whole neighbourhoods held out; hash = a hash of the file names.")
@click.option("--limit", type=count(), default=None, help="Score only the first N tiles of the split.")
@weights_opt
@device_opt
@precision_opt
@overlap_opt
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the figures to this JSON file.")
@click.option("--grid", "grid_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG grid: map | palette baseline | model | real, one tile a row.")
@click.option("--grid-tiles", type=count(), default=8, show_default=True, help="Rows of the --grid image.")
@click.option("--no-structure", is_flag=True,
              help="Skip the structure score (its judge trains for minutes the first time on a split; "
                   "it is then cached in ~/.cache/geo-pix2pix/judges).")
@overwrite_opt
@click.pass_context
def evaluate(ctx, data, layout, direction, aerial, split, val_fraction, split_by, limit, weights, device, precision,
             overlap, json_path, grid_path, grid_tiles, no_structure, overwrite):
    """Score a model on paired tiles in DATA against real aerials and two baselines.

    Prints L1, PSNR, SSIM, colour-histogram distance and sharpness ratio for the model,
    a palette-lookup baseline and a mean-colour baseline (both fitted on the training
    split), and the structure score: how much of the map's roads, water and green a
    segmenter trained on the training split's real aerials finds in the outputs,
    relative to the real aerials (1 = as much as a photo).
    """
    import json

    from ..evaluate.evaluation import evaluate as evaluate_fn
    from ..evaluate.evaluation import format_table
    from ..grid.tiling import DEFAULT_OVERLAP
    from ..model.spec import resolve_model

    json_file, grid_file = _check_new_file(json_path, overwrite), _check_new_file(grid_path, overwrite)
    source = _pair_source(layout, data, direction, aerial)
    model = resolve_model(_model_spec(weights, device, precision))
    bar, update = _progress_bar(ctx, "evaluate")
    with bar:
        result = evaluate_fn(source, model, split=split, val_fraction=val_fraction, split_by=split_by, limit=limit,
                             overlap=DEFAULT_OVERLAP if overlap is None else overlap,
                             grid_tiles=grid_tiles if grid_file else 0, structure=not no_structure,
                             progress=update)
    click.echo(format_table(result))
    if json_file is not None:
        record = result.to_dict()
        record["data"] = str(data)
        record["model"] = {"weights": str(weights) if weights else "default",
                           "identity": model.identity, "steps": model.provenance.get("steps"),
                           "precision": model.precision,
                           "ground_resolution": model.ground_resolution}
        json_file.write_text(json.dumps(record, indent=2) + "\n")
    if grid_file is not None and result.grid is not None:
        from PIL import Image

        Image.fromarray(result.grid).save(grid_file)
    for p in (json_file, grid_file):
        if p is not None and not ctx.meta.get("quiet"):
            click.echo(f"wrote {p}", err=True)


@main.command()
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write: WEIGHTS with the int8 calibration added.")
@weights_opt
@click.option("--layout", type=click.Choice(["maps", "side-by-side", "folders"]), default="maps", show_default=True,
              help="maps: DATA are map rasters or images; side-by-side / folders: DATA is a paired "
                   "training folder, as for train (the map halves of its training split are used).")
@click.option("--direction", type=click.Choice(["AtoB", "BtoA"]), default="BtoA", show_default=True,
              help="side-by-side only: BtoA = right half is the map.")
@click.option("--tiles", "max_tiles", type=count(), default=1024, show_default=True,
              help="Map tiles to observe (spread evenly over DATA).")
@click.option("--bands", type=str, default=None,
              help="maps layout: bands of DATA to read as R,G,B (1-based), as render --bands.")
@overwrite_opt
@click.pass_context
def calibrate(ctx, data, out_path, weights, layout, direction, max_tiles, bands, overwrite):
    """Calibrate WEIGHTS for --precision int8 on the map tiles in DATA.

    Runs the model on up to --tiles 256×256 map tiles, records the range of every
    layer's activations and writes a copy of the checkpoint holding them. Use maps
    like the ones you will render.
    """
    import numpy as np

    from ..errors import OptionError
    from ..model.accel.int8 import calibrate as calibrate_fn
    from ..model.checkpoints import export_checkpoint
    from ..model.load import default_model_path
    from ..model.spec import resolve_model

    out_file = _check_new_file(out_path, overwrite)
    src_weights = weights or default_model_path()
    model = resolve_model(src_weights, "cpu")
    if layout == "maps":
        from ..io.read import map_tiles

        per_map = -(-max_tiles // len(data))  # each map's share, read evenly spread over it
        tiles = [t for path in data for t in map_tiles(path, bands=bands, limit=per_map)]
    else:
        from ..evaluate.evaluation import resize
        from ..train.data import split_names

        if len(data) != 1:
            raise OptionError(f"--layout {layout} takes one DATA folder, not {len(data)}")
        if bands:
            raise OptionError(f"--bands applies to --layout maps; --layout {layout} reads the map halves "
                              "of RGB training tiles: drop --bands")
        source = _pair_source(layout, data[0], direction, None)
        train_idx, _ = split_names(source.names, 0.1)
        pick = np.linspace(0, len(train_idx) - 1, min(max_tiles, len(train_idx))).round().astype(int)
        tiles = [resize(source.read(train_idx[i])[0]).transpose(2, 0, 1) for i in pick]
    if not tiles:
        raise OptionError(f"no map tiles found in {', '.join(map(str, data))}: give map rasters or images")
    if len(tiles) > max_tiles:
        tiles = [tiles[i] for i in np.linspace(0, len(tiles) - 1, max_tiles).round().astype(int)]
    batches = (np.stack(tiles[i : i + 8]) for i in range(0, len(tiles), 8))
    calibration = calibrate_fn(model.generator, batches)
    calibration["data"] = ", ".join(map(str, data))
    export_checkpoint(src_weights, out_file, int8=calibration)
    if not ctx.meta.get("quiet"):
        click.echo(f"wrote {out_file} (int8 calibration on {calibration['tiles']} map tiles)", err=True)


@main.command("export-onnx")
@click.argument("dst", type=click.Path(dir_okay=False))
@weights_opt
@overwrite_opt
@click.pass_context
def export_onnx(ctx, dst, weights, overwrite):
    """Write the generator of WEIGHTS (default: the shipped model) as an ONNX model DST.

    Run it with --weights DST (onnxruntime, CPU; needs geo-pix2pix[onnx]).
    """
    from ..model.accel.onnx import export_onnx as export_fn
    from ..model.spec import resolve_model

    out = _check_new_file(dst, overwrite)
    model = resolve_model(weights, "cpu")
    export_fn(model, out)
    if not ctx.meta.get("quiet"):
        click.echo(f"wrote {out}", err=True)


@main.command()
@click.argument("source")
@click.argument("dest", type=click.Path())
@click.option("--zoom", "-z", required=True, help="Zoom or zoom range to make, e.g. 14-17.")
@click.option("--bbox", default=None, help="Area as W,S,E,N in degrees [default: SOURCE's extent].")
@click.option("--aoi", type=click.Path(dir_okay=False), default=None,
              help="Area as GeoJSON polygons (lon/lat).")
@click.option("--format", "fmt", type=click.Choice(["png", "jpeg", "webp"]), default="png", show_default=True)
@click.option("--quality", type=count(1, 100, hint="the default is 85"), default=85, show_default=True,
              help="JPEG/WebP quality.")
@click.option("--meta-size", type=count(1, 64, hint="the default is 8 (8×8 tiles per model pass)"), default=8,
              show_default=True,
              help="Metatile side in tiles: tiles rendered per job (MapProxy meta_size).")
@click.option("--buffer", type=Number(int, 0, hint="the default is 32"), default=32, show_default=True,
              help="Pixels of rendered context around every tile border (model chips overlap by twice this).")
@click.option("--render-zoom", type=count(0, 24), default=None,
              help="Run the model at this zoom [default: the zoom matching its ground resolution].")
@click.option("--workers", "-j", type=count(), default=1, show_default=True, help="Worker processes.")
@click.option("--expire", type=click.Path(dir_okay=False), default=None,
              help="File of changed source tiles, z/x/y per line (osm2pgsql/render_expired).")
@click.option("--force", is_flag=True, help="Regenerate every tile, changed or not.")
@click.option("--no-model", is_flag=True, help="Copy the source's pixels: cut map tiles, no model.")
@click.option("--bands", type=str, default=None, help="Raster SOURCE: bands to read as R,G,B.")
@click.option("--name", default=None, help="Tile set name in the metadata [default: DEST's name].")
@click.option("--attribution", default=None,
              help="Attribution in the metadata [default: 'Synthetic aerial imagery…; map data: ' and the "
                   "source's own attribution].")
@click.option("--url-base", default=None, metavar="URL",
              help="XYZ DEST: the URL the folder is served at; tilejson.json then lists absolute tile URLs "
                   "[default: relative ones, resolved against the tilejson.json's own URL].")
@click.option("--max-tiles", type=Number(int, 0, hint="0 for no limit"), default=None,
              help="Refuse a run making more tiles than this, all zooms counted; 0: no limit "
                   "[default: 100,000,000].")
@weights_opt
@device_opt
@precision_opt
@click.option("--overwrite", is_flag=True,
              help="Write into a DEST that geo-pix2pix did not make (a file DEST is replaced, once the new "
                   "one is complete).")
@scheduler_opt
@click.option("--webviewer", is_flag=True,
              help="XYZ DEST: also write index.html, a map page of the tiles that works offline (Leaflet inside).")
@click.pass_context
@_kept_heap
def tiles(ctx, source, dest, zoom, bbox, aoi, fmt, quality, meta_size, buffer, render_zoom, workers, expire,
          force, no_model, bands, name, attribution, url_base, max_tiles, weights, device, precision, overwrite,
          scheduler, webviewer):
    """Make or update an XYZ tile cache DEST of synthetic aerial imagery from map tiles SOURCE.

    SOURCE: an XYZ folder ({z}/{x}/{y}.png), an .mbtiles file, a georeferenced raster in any
    CRS, or a URL template such as http://host/{z}/{x}/{y}.png. DEST: a folder (XYZ), an
    .mbtiles file or a .pmtiles archive. Reruns regenerate only tiles whose inputs changed.
    """
    from ..errors import OptionError
    from ..tiles import Area, CopyModel, make_tiles

    if bbox and aoi:
        raise OptionError("give --bbox or --aoi, not both")
    area = Area.from_bbox(bbox) if bbox else Area.from_geojson(aoi) if aoi else None
    if no_model and weights:
        raise OptionError("--no-model copies the source's pixels: drop --weights, or drop --no-model")
    if scheduler and workers > 1:
        raise OptionError(f"--workers {workers} runs a local pool, --scheduler a Dask cluster: give one of them")
    if webviewer and Path(dest).suffix.lower() in (".mbtiles", ".pmtiles"):
        raise OptionError(f"--webviewer writes index.html into an XYZ folder DEST, and {dest!r} is a file: drop "
                          "--webviewer, or use `geo-pix2pix serve` to view it")
    model = CopyModel() if no_model else _model_spec(weights, device, precision)
    # What Ctrl-C, SIGTERM or SIGHUP leave: complete tiles, and a file --overwrite replaces as it was.
    ctx.meta["interrupted_note"] = ("the tiles made so far are kept and a rerun goes on from there; temporary "
                                    "files removed; a file that --overwrite was to replace is left as it was.")
    limits = {} if max_tiles is None else {"max_tiles": max_tiles}
    bar, update = _progress_bar(ctx, "tiles")
    with bar:
        result = make_tiles(source, dest, zooms=zoom, area=area, model=model, fmt=fmt, quality=quality,
                            meta_size=meta_size, buffer=buffer, render_zoom=render_zoom, workers=workers,
                            expire=expire, force=force, overwrite=overwrite,
                            device=None if device == "auto" else device, bands=bands, name=name,
                            attribution=attribution, url_base=url_base, progress=update, client=scheduler,
                            **limits)
    for tile, reason in result.failures:
        click.echo(f"failed {tile}: {reason}", err=True)
    if not ctx.meta.get("quiet"):
        click.echo(f"{result.dest}: {result.summary()}", err=True)
    if webviewer:
        from ..serve.viewer import write_viewer

        url = source if str(source).startswith(("http://", "https://")) else None
        page = write_viewer(dest, map_url=url)
        if not ctx.meta.get("quiet"):
            click.echo(f"wrote {page}", err=True)
    if result.failed:
        ctx.exit(3)  # some tiles failed: the rest are written; a rerun retries them


@main.command("osm-map")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--bbox", default=None,
              help="Area as W,S,E,N in degrees [default: the extent of SRC's roads and buildings].")
@click.option("--resolution", type=GROUND_RESOLUTION, default=None,
              help="Ground metres per pixel [default: the default model's, 2.12].")
@overwrite_opt
@click.pass_context
def osm_map(ctx, src, dst, bbox, resolution, overwrite):
    """Draw OpenStreetMap data SRC (.osm.pbf) as a map raster DST (GeoTIFF, EPSG:3857) to render.

    Roads, buildings, parks, water and railways are drawn in the colours and road widths of
    the default model's training maps. Needs the osm extra: pip install "geo-pix2pix[osm]".
    """
    from ..osm import DEFAULT_RESOLUTION, parse_bbox
    from ..osm import osm_map as draw_osm_map

    logging.getLogger("pyrosm").setLevel(logging.WARNING)  # it logs every call at INFO
    if resolution is None:  # the default model's, read from its checkpoint
        from ..model.checkpoints import load_checkpoint
        from ..model.load import default_model_path

        model_path = default_model_path()
        resolution = load_checkpoint(model_path).ground_resolution if model_path.exists() else None
        resolution = resolution or DEFAULT_RESOLUTION
    bar, update = _progress_bar(ctx, "osm-map", unit="block")
    with bar:
        result = draw_osm_map(src, dst, bbox=parse_bbox(bbox), resolution=resolution, overwrite=overwrite,
                              progress=update)
    if not ctx.meta.get("quiet"):
        click.echo(f"wrote {result.path} ({result.width}×{result.height} px at {result.resolution:g} m/px, "
                   f"{result.features} OSM features)", err=True)


@main.group("qgis")
def qgis_group() -> None:
    """QGIS: the plugin that adds geo-pix2pix to the Processing toolbox and qgis_process."""


@qgis_group.command("build-plugin")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default="geo_pix2pix_plugin.zip",
              show_default=True, help="The plugin zip to write.")
@overwrite_opt
@click.pass_context
def qgis_build_plugin(ctx, output, overwrite):
    """Build the plugin zip for QGIS's Plugins ▸ Install from ZIP (and the plugin repository).

    The zip holds the plugin's sources only; on first use the plugin installs
    geo-pix2pix (this version), PyTorch and rasterio into its own environment.
    """
    from ..qgis.build import build_plugin

    result = build_plugin(output, overwrite=overwrite)
    if not ctx.meta.get("quiet"):
        click.echo(f"wrote {result.path} (geo-pix2pix plugin {result.version}, {len(result.files)} files, "
                   f"{result.size / 1e3:.0f} kB): in QGIS, Plugins ▸ Manage and Install Plugins ▸ Install from "
                   "ZIP", err=True)


@qgis_group.command("install-plugin")
@click.option("--profile-dir", type=click.Path(file_okay=False), default=None,
              help="QGIS profile folder [default: this OS's default profile, e.g. "
                   "~/.local/share/QGIS/QGIS3/profiles/default on Linux].")
@click.option("--overwrite", is_flag=True,
              help="Replace a geo_pix2pix_plugin folder that geo-pix2pix did not install.")
@click.pass_context
def qgis_install_plugin(ctx, profile_dir, overwrite):
    """Install the geo-pix2pix QGIS plugin into a QGIS profile.

    Run it with the Python that QGIS uses (or one of the same version): the plugin
    records where this Python finds geo_pix2pix, so QGIS finds it there too.
    """
    from ..qgis.install import PLUGIN_NAME, install_plugin

    result = install_plugin(profile_dir, overwrite=overwrite)
    if not ctx.meta.get("quiet"):
        verb = "updated" if result.replaced else "installed"
        click.echo(f"{verb} {result.path}\nenable it in QGIS (Plugins ▸ Manage and Install Plugins ▸ "
                   f"Installed) or with: qgis_process plugins enable {PLUGIN_NAME}", err=True)


@main.command()
@click.argument("source")
@click.option("--cache", type=click.Path(), default=None,
              help="Where tiles are kept: a folder or an .mbtiles file, the same cache `tiles` makes and updates "
                   "[default: a temporary folder, removed at exit].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=Number(int, 0, 65535, hint="0 picks a free port"), default=8000, show_default=True)
@click.option("--zoom", "-z", default="12-18", show_default=True, help="Zooms served, e.g. 12-18.")
@click.option("--bbox", default=None, help="Area served as W,S,E,N in degrees [default: SOURCE's extent].")
@click.option("--format", "fmt", type=click.Choice(["png", "jpeg", "webp"]), default="png", show_default=True)
@click.option("--quality", type=count(1, 100, hint="the default is 85"), default=85, show_default=True,
              help="JPEG/WebP quality.")
@click.option("--buffer", type=Number(int, 0, hint="the default is 32"), default=32, show_default=True,
              help="Pixels of rendered context around every tile border (as in `tiles`).")
@click.option("--render-zoom", type=count(0, 24), default=None,
              help="Run the model at this zoom [default: the zoom matching its ground resolution].")
@click.option("--workers", "-j", type=count(), default=1, show_default=True,
              help="Model runs at once (the CPU's cores are shared by one run; a GPU is one device queue).")
@click.option("--queue", "queue_size", type=count(), default=32, show_default=True,
              help="Metatiles waiting for the model before requests get 503 + Retry-After.")
@click.option("--bands", type=str, default=None, help="Raster SOURCE: bands to read as R,G,B.")
@weights_opt
@device_opt
@precision_opt
@click.pass_context
@_kept_heap
def serve(ctx, source, cache, host, port, zoom, bbox, fmt, quality, buffer, render_zoom, workers, queue_size, bands,
          weights, device, precision):
    """Serve synthetic aerial XYZ tiles of map SOURCE live, with a web viewer, until Ctrl-C.

    SOURCE is anything `tiles` reads. Tiles are rendered on first request (the tiles of
    one metatile together) and kept in --cache; a tile served is byte-identical to the
    one `tiles SOURCE DEST` makes with the same options, and either command can fill the
    cache for the other. Endpoints: /{z}/{x}/{y}.png, /map/{z}/{x}/{y}.png (SOURCE),
    /tilejson.json, / (viewer), /healthz.
    """
    from ..serve.server import serve as run_server
    from ..tiles import Area

    model = _model_spec(weights, device, precision)
    ctx.meta["interrupted_note"] = ("stopped serving; every tile and manifest row written is whole, and a "
                                    "restart serves the cache at once.")
    run_server(source, cache, host=host, port=port, zooms=zoom, model=model, workers=workers, queue_size=queue_size,
               area=Area.from_bbox(bbox) if bbox else None, fmt=fmt, quality=quality, buffer=buffer,
               render_zoom=render_zoom, bands=bands, device=None if device == "auto" else device)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
