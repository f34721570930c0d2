"""The ``geo-pix2pix`` command line: a thin click layer over the library.

Each command resolves its arguments and calls one library function; heavy modules are
imported inside the commands so ``geo-pix2pix --help`` stays fast. Errors the user can
fix are printed as one line (``Error: …``) with exit code 1; ``-v`` adds tracebacks.
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from pathlib import Path

import click

from . import __version__
from .errors import GeoPix2PixError

log = logging.getLogger("geo_pix2pix")


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM so that cleanup (temporary files) runs."""


def _on_sigterm(signum, frame):  # pragma: no cover - exercised by subprocess tests
    raise Interrupted()


class Group(click.Group):
    """Turns library errors into one-line messages and signals into clean exits."""

    def invoke(self, ctx: click.Context):
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return super().invoke(ctx)
        except GeoPix2PixError as exc:
            if ctx.meta.get("verbose"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)
        except Interrupted:
            click.echo("Terminated: temporary files removed, existing outputs left untouched.", err=True)
            ctx.exit(143)
        except KeyboardInterrupt:
            click.echo("Interrupted: temporary files removed, existing outputs left untouched.", err=True)
            ctx.exit(130)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    logging.getLogger("rasterio").setLevel(logging.WARNING)
    # Warnings (not georeferenced, resampling…) are shown once, as one line.
    warnings.showwarning = lambda msg, cat, *a, **k: click.echo(f"Warning: {msg}", err=True)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geo-pix2pix")
@click.option("-v", "--verbose", count=True, help="More log output; -v also shows tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Synthetic aerial imagery from georeferenced map rasters (pix2pix)."""
    ctx.meta["verbose"] = verbose > 0
    ctx.meta["quiet"] = quiet
    _setup_logging(verbose, quiet)


# -- options shared by several commands (rasterio's rio/options.py pattern) -------------
weights_opt = click.option("--weights", "-w", type=click.Path(dir_okay=False), default=None,
                           help="Checkpoint file; default: the model shipped with geo-pix2pix.")
device_opt = click.option("--device", type=str, default="auto", show_default=True,
                          help="auto, cpu, cuda, cuda:N or mps (auto picks CUDA when present).")
batch_opt = click.option("--batch-size", "-b", type=int, default=None,
                         help="Tiles per model call [default: 8].")
overlap_opt = click.option("--overlap", type=int, default=None,
                           help="Overlap between neighbouring tiles, pixels [default: 64].")
overwrite_opt = click.option("--overwrite", is_flag=True, help="Replace an existing output.")


def _progress_bar(ctx: click.Context, desc: str, unit: str = "tile"):
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit=unit, disable=ctx.meta.get("quiet") or None,
               dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return bar, update


@main.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@weights_opt
@device_opt
@batch_opt
@overlap_opt
@overwrite_opt
@click.option("--bands", type=str, default=None, help="Bands to read as R,G,B (1-based), e.g. 3,2,1.")
@click.option("--model-grid", is_flag=True,
              help="Write the result on the model's resolution grid instead of the input's.")
@click.option("--cog", is_flag=True, help="Write a Cloud Optimized GeoTIFF.")
@click.option("--compress", default="deflate", show_default=True,
              type=click.Choice(["deflate", "lzw", "zstd", "jpeg", "none"], case_sensitive=False))
@click.pass_context
def render(ctx, src, dst, weights, device, batch_size, overlap, overwrite, bands, model_grid, cog, compress):
    """Render the map raster SRC into a synthetic aerial image DST.

    DST keeps SRC's CRS, transform, size and nodata. Use .tif for GeoTIFF output, or
    .png/.jpg for plain images.
    """
    from .model import load_model
    from .render import render as render_fn

    model = load_model(weights, device)
    bar, update = _progress_bar(ctx, "render")
    with bar:
        result = render_fn(src, dst, model=model, overlap=overlap, batch_size=batch_size,
                           overwrite=overwrite, progress=update, bands=bands, model_grid=model_grid,
                           cog=cog, compress=compress)
    note = " (resampled to the model's resolution)" if result.resampled else ""
    if not ctx.meta.get("quiet"):
        click.echo(f"wrote {result.path} ({result.width}×{result.height}, "
                   f"{result.tiles_rendered}/{result.tiles_total} tiles rendered{note})", err=True)


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
@click.option("--steps", type=int, default=200_000, show_default=True, help="Total training steps.")
@click.option("--decay-steps", type=int, default=0, show_default=True,
              help="Last N steps: learning rate decays linearly to zero.")
@click.option("--batch-size", "-b", type=int, default=1, show_default=True)
@click.option("--width", type=int, default=64, show_default=True, help="Generator base width (64 = paper).")
@click.option("--d-width", type=int, default=64, show_default=True, help="Discriminator base width.")
@click.option("--norm", type=click.Choice(["batch", "instance"]), default="instance", show_default=True,
              help="instance = the paper's test-time per-tile statistics, batch-independent.")
@click.option("--load-size", type=str, default="286", show_default=True,
              help="Jitter resize: N or LOW-HIGH (random size per sample).")
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--l1-weight", type=float, default=100.0, show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True)
@click.option("--ground-resolution", type=float, default=None,
              help="Metres per pixel of the training crops, stored in the checkpoint.")
@click.option("--checkpoint-every", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue from a checkpoint (weights, optimisers, step, RNG).")
@device_opt
@click.pass_context
def train(ctx, data, out_dir, layout, direction, aerial, steps, decay_steps, batch_size, width, d_width,
          norm, load_size, lr, l1_weight, val_fraction, ground_resolution, checkpoint_every, seed,
          resume, device):
    """Train a pix2pix model on paired map/aerial data; checkpoints go to OUT_DIR."""
    from .data import SideBySideFolder, TwoFolders
    from .errors import OptionError
    from .networks import DiscriminatorConfig, GeneratorConfig
    from .train import TrainConfig, Trainer

    try:
        lo, _, hi = load_size.partition("-")
        sizes = (int(lo), int(hi or lo))
    except ValueError:
        raise OptionError(f"--load-size {load_size!r} must be N or LOW-HIGH, e.g. 286 or 256-300") from None
    if layout == "side-by-side":
        source = SideBySideFolder(data, direction)
    elif layout == "folders":
        source = TwoFolders(Path(data) / "map", Path(data) / "aerial")
    else:
        if aerial is None:
            raise OptionError("--layout rasters needs --aerial AERIAL_RASTER beside the map raster DATA")
        from .georef_pairs import RasterPairs

        source = RasterPairs(data, aerial)
        if ground_resolution is None:
            ground_resolution = source.ground_resolution
    cfg = TrainConfig(steps=steps, decay_steps=decay_steps, batch_size=batch_size, lr=lr,
                      l1_weight=l1_weight, load_size=sizes, val_fraction=val_fraction, seed=seed,
                      checkpoint_every=checkpoint_every, ground_resolution=ground_resolution)
    trainer = Trainer(source, out_dir, cfg, GeneratorConfig(base_width=width, norm=norm),
                      DiscriminatorConfig(base_width=d_width, norm=norm), device,
                      provenance={"data": str(data), "layout": layout})
    if resume:
        trainer.resume(resume)
    from tqdm import tqdm

    with tqdm(total=steps, initial=trainer.state.step, desc="train", unit="step",
              disable=ctx.meta.get("quiet") or None, dynamic_ncols=True) as bar:
        def progress(step: int, rec: dict) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(d=rec.get("loss_d"), g=rec.get("loss_g_gan"), l1=rec.get("loss_g_l1"),
                            refresh=False)

        final = trainer.fit(progress)
    click.echo(f"wrote {final} (step {trainer.state.step})", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
