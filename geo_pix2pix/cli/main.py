"""The ``geo-pix2pix`` command line: a thin click layer over the library.

This module holds the group, its global options, logging and signal set-up; each
command is a module of its own (``cli/render.py``…) that resolves its arguments and
calls one library function, importing heavy modules inside the command so that
``geo-pix2pix --help`` stays fast. Errors the user can fix are printed as one line
(``Error: …``) with exit code 1; ``-v`` adds tracebacks.
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings

import click

from .._version import __version__
from ..errors import GeoPix2PixError
from .calibrate import calibrate
from .evaluate import evaluate
from .export_onnx import export_onnx
from .osm import osm_map
from .qgis import qgis_group
from .render import render
from .serve import serve
from .signals import SIGNALS, install_signal_handlers
from .tiles import tiles
from .train import train


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
    """Other libraries' INFO and DEBUG lines (Dask logs dozens per local cluster) only with -vv,
    and never distributed's Ctrl-C race (:func:`_dask_interrupt_race`)."""
    if _dask_interrupt_race(record):
        return False
    return record.levelno >= logging.WARNING or record.name.split(".")[0] == "geo_pix2pix"


def _dask_interrupt_race(record: logging.LogRecord) -> bool:
    """distributed's ``sync`` schedules a ``cancel`` callback that reads a variable not yet
    assigned when Ctrl-C lands at the wrong moment; tornado logs its NameError as an ERROR
    with a traceback, though the interrupt itself is handled (a clean exit follows)."""
    exc = record.exc_info[1] if record.exc_info else None
    if not isinstance(exc, NameError) or not record.name.startswith("tornado"):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.replace("\\", "/").endswith("distributed/utils.py")


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
            code, word = SIGNALS[getattr(exc, "signum", signal.SIGINT)]
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


for command in (render, train, evaluate, calibrate, export_onnx, tiles, osm_map, qgis_group, serve):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
