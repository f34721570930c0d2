"""Helpers shared by the commands: the progress bar, the heap tuning, the model the
options name, the paired data of --layout and the refusal to overwrite an output."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import click

from .signals import check_interrupted

__all__ = ["check_new_file", "keeps_heap", "log", "log_model", "model_spec", "pair_source", "progress_bar",
           "sets_threads"]

log = logging.getLogger("geo_pix2pix")


def keeps_heap(command):
    """Run ``command`` with freed memory kept in the heap (:func:`heap.kept_heap`), restored on
    exit: the library leaves the process's allocator alone; the CLI tunes it for the user."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from ..heap import kept_heap

        with kept_heap():
            return command(*args, **kwargs)

    return run


def sets_threads(command):
    """Run ``command`` (which takes ``threads``) with that many torch CPU threads, by default
    the cores other processes leave free (:func:`devices.free_cpu_threads`), restored on exit."""

    @functools.wraps(command)
    def run(*args, threads=None, **kwargs):
        if kwargs.get("scheduler"):  # the model runs on the Dask workers, one thread each
            return command(*args, **kwargs)
        import torch

        from ..model.devices import free_cpu_threads

        before = torch.get_num_threads()
        chosen = threads or free_cpu_threads()
        log.info("%d CPU thread(s) for the model%s", chosen,
                 "" if threads else " (cores not busy with other processes; --threads to choose)")
        torch.set_num_threads(chosen)
        try:
            return command(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return run


def progress_bar(ctx: click.Context, desc: str, unit: str = "tile"):
    """A tqdm bar (off with -q) and the ``progress(done, total)`` callback that moves it."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit=unit, disable=ctx.meta.get("quiet") or None,
               dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        check_interrupted()
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return bar, update


def model_spec(weights: str | None, device: str, precision: str):
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


def log_model(weights: str | None, model, precision: str, device: str | None = None) -> None:
    """INFO: which model runs, in what precision, where (``model`` None: loaded elsewhere)."""
    from ..model.load import default_model_path, model_device

    name = weights or f"the default model ({default_model_path().name})"
    identity = model.identity if model is not None else ""
    where = device or str(model_device(model))
    log.info("model %s%s, %s on %s", name, f" [{identity[:12]}]" if identity else "", precision, where)


def pair_source(layout: str, data: str, direction: str, aerial: str | None):
    """The paired map/aerial data named by --layout (train, evaluate and calibrate)."""
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


def check_new_file(path: str | None, overwrite: bool) -> Path | None:
    """``path`` as a Path once its folder exists and, without --overwrite, the file does not."""
    from ..errors import OutputExistsError, OutputPathError

    if path is None:
        return None
    p = Path(path)
    if not (p.parent if str(p.parent) else Path(".")).is_dir():
        raise OutputPathError(f"output folder {str(p.parent)!r} does not exist: create it first")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"output {str(p)!r} exists: pass --overwrite to replace it")
    return p
