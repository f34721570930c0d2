"""Option types and the options shared by several commands (rasterio's ``rio/options.py``).

Every numeric option is a :class:`Number`: it is checked while the command line is
parsed, before the command touches a file or builds a model, and a bad value is one
line (``Error: --lr nan must be a finite number greater than 0; the default is
0.0002``), exit code 1. The library checks the same values again for Python callers;
the rules that depend on each other or on the data (``--overlap`` against the tile
size) are left to it.
"""

from __future__ import annotations

import math

import click

from ..errors import OptionError

__all__ = ["FRACTION", "GROUND_RESOLUTION", "Number", "batch_opt", "device_opt", "overlap_opt", "overwrite_opt",
           "precision_opt", "scheduler_opt", "weights_opt"]


class Number(click.ParamType):
    """An ``int`` or ``float`` option that must be finite and within ``[lo, hi]`` (a bound
    excluded where ``lo_open``/``hi_open``); ``hint`` ends the message (the default, an example)."""

    def __init__(self, kind: type = int, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False, hint: str = "") -> None:
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open, self.hint = kind, lo, hi, lo_open, hi_open, hint
        self.name = "integer" if kind is int else "float"

    def rule(self) -> str:
        lo, hi = (None if b is None else f"{b:g}" for b in (self.lo, self.hi))
        what = "an integer" if self.kind is int else "a finite number"
        if lo is not None and hi is not None:
            ends = " (" + " and ".join(f"{b} excluded" for b, o in ((lo, self.lo_open), (hi, self.hi_open)) if o) + ")"
            return f"{what} from {lo} to {hi}" + (ends if self.lo_open or self.hi_open else "")
        if lo is not None:
            return f"{what} greater than {lo}" if self.lo_open else (
                f"at least {lo}" if self.kind is int else f"{what} of at least {lo}")
        if hi is not None:
            return f"{what} less than {hi}" if self.hi_open else f"{what} of at most {hi}"
        return what

    def convert(self, value, param, ctx):
        name = max(param.opts, key=len) if param is not None and param.opts else "value"
        hint = f"; {self.hint}" if self.hint else ""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = self.kind(str(value).strip())
            except ValueError:
                raise OptionError(f"{name} {value!r} is not {'an integer' if self.kind is int else 'a number'}: "
                                  f"give {self.rule()}{hint}") from None
        if self.kind is float:
            value = float(value)
        below = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        above = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if not math.isfinite(value) or below or above:
            raise OptionError(f"{name} {value:g} must be {self.rule()}{hint}" if self.kind is float
                              else f"{name} {value} must be {self.rule()}{hint}")
        return value


def count(lo: int = 1, hi: int | None = None, hint: str = "") -> Number:
    """An integer count (tiles, steps, workers…), at least ``lo``."""
    return Number(int, lo, hi, hint=hint)


FRACTION = Number(float, 0, 1, hi_open=True, hint="the default is 0.1")
#: the range checkpoints.GROUND_RESOLUTION_RANGE accepts (not imported: it would bring torch)
GROUND_RESOLUTION = Number(float, 1e-3, 1e5, hint="metres per pixel, e.g. 2.12")

weights_opt = click.option("--weights", "-w", type=click.Path(dir_okay=False), default=None,
                           help="Checkpoint file; default: the model shipped with geo-pix2pix.")
device_opt = click.option("--device", type=str, default="auto", show_default=True,
                          help="auto, cpu, cuda, cuda:N or mps (auto picks CUDA when present).")
batch_opt = click.option("--batch-size", "-b", type=count(hint="the default is 8"), default=None,
                         help="Tiles per model call [default: 8].")
overlap_opt = click.option("--overlap", type=Number(int, 0, hint="the default is 64"), default=None,
                           help="Overlap between neighbouring tiles, pixels [default: 64].")
threads_opt = click.option("--threads", type=count(hint="the default leaves busy cores to their processes"),
                           default=None, help="CPU threads for the model [default: the cores other processes do "
                                              "not keep busy when the command starts (niced ones do not "
                                              "count); at least 1].")
overwrite_opt = click.option("--overwrite", is_flag=True, help="Replace an existing output.")
precision_opt = click.option("--precision", type=click.Choice(["fp32", "bf16", "int8"]), default="fp32",
                             show_default=True,
                             help="bf16: bfloat16, about 2× faster on CPUs with AVX512-BF16 or AMX, outputs "
                                  "under a grey level from fp32 on average. int8: quantised CPU inference, "
                                  "several times faster, outputs differ by a few grey levels (needs a calibrated "
                                  "checkpoint; the default model is).")
scheduler_opt = click.option("--scheduler", default=None, metavar="tcp://HOST:PORT|local:N",
                             help="Run on a Dask cluster: a scheduler's address, or local:N to start N "
                                  "workers here (needs geo-pix2pix[dask]; see docs/scaling.md).")
