"""Running metatile jobs: in this process, in a pool of worker processes, or on a Dask
cluster (:mod:`.cluster`, when a client is given).

Each worker loads the model once from its :class:`~geo_pix2pix.model.spec.ModelSpec`
(from its weights file, or unpickled: pickled once in the main process) and opens the
source lazily; jobs go out a few at a time and results come back in completion order to
the single writer in the main process. Workers use
the ``spawn`` start method: forking a process that has already run torch's thread
pools can deadlock.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from torch import nn

from ..heap import keep_heap_for_process
from ..model.spec import ModelSpec
from .metatile import MetaJob, MetaResult, RenderSettings, run_metatile
from .sources import TileSource

__all__ = ["run_jobs"]

_WORKER: dict = {}


def _init_worker(source: TileSource, spec: ModelSpec, settings: RenderSettings, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    keep_heap_for_process()  # this process only renders: batches reuse memory (heap.py)
    _WORKER.update(source=source, model=spec.load(), settings=settings)


def _run_in_worker(job: MetaJob) -> MetaResult:
    return run_metatile(job, _WORKER["source"], _WORKER["model"], _WORKER["settings"])


def run_jobs(jobs: Iterable[MetaJob], source: TileSource, model: nn.Module, settings: RenderSettings,
             workers: int = 1, spec: ModelSpec | None = None, client=None) -> Iterator[MetaResult]:
    """Yield the result of every job; with ``workers > 1`` or a Dask ``client`` in
    completion order."""
    if client is not None:
        from .cluster import run_jobs_on_cluster

        yield from run_jobs_on_cluster(jobs, source, model, settings, client, spec)
        return
    if workers <= 1:
        for job in jobs:
            yield run_metatile(job, source, model, settings)
        return
    spec = spec or ModelSpec.of(model)
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(source, spec, settings, threads))
    pending: set[Future] = set()
    it = iter(jobs)
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * workers:
                try:
                    pending.add(pool.submit(_run_in_worker, next(it)))
                except StopIteration:
                    exhausted = True
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
