"""Running metatile jobs on a Dask cluster, behind the same interface as the local pool.

:func:`run_jobs_on_cluster` is what :func:`.workers.run_jobs` does with a process pool,
with Dask tasks instead: each metatile job is a task, results come back in completion
order to the single writer in the calling process (tiles, then manifest rows, as in a
local run), and at most :func:`geo_pix2pix.distributed.cluster.task_window` jobs are out at once.

Each worker process loads the model once (:class:`geo_pix2pix.model.spec.ModelSpec`):
from its weights file when the run was given a path (every worker must be able to open
it, as the source), or unpickled from one copy scattered to every worker. The source
travels with each job (sources pickle without their open handles) and is closed at the
end of the job.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator

from torch import nn

from ..distributed.cluster import as_done, connect, worker_model
from ..errors import TileSourceError
from ..model.spec import ModelSpec
from .metatile import MetaJob, MetaResult, RenderSettings, run_metatile
from .sources import MBTilesFile, RasterSource, TileSource, XYZFolder

__all__ = ["run_jobs_on_cluster"]


def _check_visible(source: TileSource) -> None:
    """A file source missing on this worker would read as "no tiles": fail the run instead."""
    local = isinstance(source, (XYZFolder, MBTilesFile, RasterSource)) and not source.spec.startswith("/vsi")
    if local and not os.path.exists(source.spec):
        raise TileSourceError(f"source {source.spec!r} does not exist on the Dask worker on {socket.gethostname()}: "
                              "every worker must see SOURCE at the same path (a shared file system)")


def _run_job_task(job: MetaJob, source: TileSource, settings: RenderSettings, spec: ModelSpec) -> MetaResult:
    _check_visible(source)
    model = worker_model(spec)
    try:
        return run_metatile(job, source, model, settings)
    finally:
        source.close()


def run_jobs_on_cluster(jobs: Iterable[MetaJob], source: TileSource, model: nn.Module, settings: RenderSettings,
                        client, spec: ModelSpec | None = None) -> Iterator[MetaResult]:
    """Yield the result of every job, run on the Dask cluster ``client`` (a Client, an
    address or ``local:N``), in completion order."""
    with connect(client) as c:
        shared = None
        if spec is None or spec.module is not None:
            # One pickled copy of the module, sent once to every worker, not once per job.
            shared = c.scatter(spec or ModelSpec.of(model), broadcast=True, hash=False)
        try:
            yield from as_done(c, _run_job_task, jobs, source, settings, shared or spec, name="geo-pix2pix-tiles")
        finally:
            if shared is not None:
                shared.release()
