"""Running work on a Dask cluster: connecting, a bounded window of tasks, per-worker caches.

``render`` and ``tiles`` scale out by handing tasks to an existing Dask cluster (a
scheduler and ``dask worker`` processes, see ``docs/scaling.md``); the writer stays in
the calling process. This module holds what both need, and imports Dask only when a
function here is called: without ``--scheduler`` (or a ``Client``) nothing about Dask
is imported, and Dask need not be installed.

- :func:`connect` turns ``tcp://HOST:PORT``, ``local:N`` or a ``distributed.Client``
  into a client, starting (and later closing) a ``LocalCluster`` for ``local:N``;
- :func:`in_order` and :func:`as_done` keep at most ``window`` tasks submitted and
  not yet collected, so memory on the client and on the workers is bounded whatever
  the number of tasks; results stay on the workers until collected;
- :func:`worker_cached` keeps a value (a loaded model) per worker process, so each
  worker loads the model once, not once per task; the first call also undoes Dask's
  malloc setting that slows torch down (:func:`tune_worker_malloc`).

Tasks lost with a worker (killed, out of memory, its machine gone) are rescheduled by
the Dask scheduler on the workers that remain; nothing here needs to retry them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from ..errors import MissingDependencyError, OptionError

log = logging.getLogger(__name__)

__all__ = ["TASKS_PER_THREAD", "as_done", "connect", "in_order", "kept_environ", "parse_scheduler", "task_window",
           "tune_worker_malloc", "worker_cached", "worker_model"]

#: Tasks kept submitted per worker thread: one running, one queued, so a worker never
#: waits for the client between two tasks.
TASKS_PER_THREAD = 2
#: Values kept by :func:`worker_cached` in each worker process (models of recent runs).
WORKER_CACHE_SIZE = 2


def parse_scheduler(spec: str) -> tuple[str, str | int]:
    """``"tcp://10.0.0.5:8786"`` → ``("address", spec)``; ``"local:4"`` → ``("local", 4)``."""
    spec = spec.strip()
    if spec.startswith("local:"):
        n = spec.partition(":")[2]
        if not n.isdigit() or int(n) < 1:
            raise OptionError(f"--scheduler {spec!r}: local:N needs a number of workers N ≥ 1, e.g. local:4")
        return "local", int(n)
    if "://" in spec or ":" in spec:
        return "address", spec
    raise OptionError(f"--scheduler {spec!r} is not a scheduler address: give tcp://HOST:PORT (the address "
                      "`dask scheduler` prints) or local:N for N workers on this machine")


def _distributed():
    try:
        import distributed
    except ImportError:
        raise MissingDependencyError("running on a Dask cluster needs dask.distributed: "
                                     'pip install "geo-pix2pix[dask]"') from None
    return distributed


@contextmanager
def connect(scheduler) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``scheduler``.

    ``scheduler`` is a client (yielded as it is, left open), a scheduler address
    (``tcp://HOST:PORT``; the client is closed on exit, the cluster left running), or
    ``local:N``: a ``LocalCluster`` of N single-threaded worker processes listening on
    127.0.0.1 only, closed on exit.
    """
    if not isinstance(scheduler, str):
        yield scheduler
        return
    kind, value = parse_scheduler(scheduler)
    distributed = _distributed()
    if kind == "local":
        with ExitStack() as stack:
            stack.enter_context(kept_environ(_nanny_environ()))
            with held_signals(), warnings.catch_warnings():
                # Its HTTP server (health checks; no dashboard) takes another port when 8787 is
                # busy, as it is for a second local cluster, and says so in a 3-line warning.
                warnings.filterwarnings("ignore", message="Port .* is already in use")
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=value, threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address=None))
                client = stack.enter_context(distributed.Client(cluster))
            client.register_plugin(_local_worker_logs(), name="geo-pix2pix-local-worker-logs")
            log.info("started a local Dask cluster of %d workers at %s", value, cluster.scheduler_address)
            yield client
        return
    try:
        client = distributed.Client(value, timeout="30s")
    except OSError as exc:
        raise OptionError(f"--scheduler {scheduler!r}: no Dask scheduler answered ({exc}): start one with "
                          "`dask scheduler` and workers with `dask worker ADDRESS`") from None
    with client:
        log.info("connected to the Dask scheduler at %s (%d workers)", value, len(client.nthreads()))
        yield client


class _ClosingNoise(logging.Filter):
    """Drops what a local cluster's workers log when it is closed under them (Ctrl-C, an
    error): a heartbeat that found the scheduler gone, with a traceback, and a task
    cancelled while it ran. A local cluster's scheduler lives in the client's process, so
    it is gone only when the client closes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        heartbeat = msg.startswith(("Failed to communicate with scheduler during heartbeat",
                                    "Heartbeat to scheduler failed"))
        cancelled = msg.startswith("Async instruction for") and msg.endswith("ended with CancelledError")
        return not (heartbeat or cancelled)


def _local_worker_logs():
    """A worker plugin for ``local:N`` clusters that puts :class:`_ClosingNoise` on the
    worker processes' loggers, whose lines go straight to the user's terminal. Registered
    once, it is set up again on every worker the nanny restarts. (Defined here so that
    Dask is imported only when a cluster is used.)"""
    from distributed import WorkerPlugin

    class LocalWorkerLogs(WorkerPlugin):
        def setup(self, worker) -> None:
            for name in ("distributed.worker", "distributed.worker.state_machine"):
                logger = logging.getLogger(name)
                if not any(isinstance(f, _ClosingNoise) for f in logger.filters):
                    logger.addFilter(_ClosingNoise())

    return LocalWorkerLogs()


@contextmanager
def held_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP while a ``LocalCluster`` starts, and deliver them once
    it has: a cluster interrupted half-started cannot be closed (Dask's exit handler then
    fails with a traceback, and its worker processes are left to be reaped). A second
    signal is delivered at once. Signals the process ignores stay ignored.

    In the foreground of a terminal, SIGINT is ignored instead while the workers start: a
    Ctrl-C there reaches every process of the job, and worker processes started while it
    is ignored keep ignoring it (Python leaves an inherited SIG_IGN alone), so the client
    alone acts on a Ctrl-C, closing the cluster, and the workers print no tracebacks.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    kept = {s: signal.getsignal(s) for s in (getattr(signal, n) for n in names if hasattr(signal, n))}
    kept = {s: h for s, h in kept.items() if h is not signal.SIG_IGN and h is not None}
    pending: list[int] = []

    def restore() -> None:
        for s, h in kept.items():
            signal.signal(s, h)

    def hold(signum, frame) -> None:
        if pending:  # asked twice: now
            restore()
            signal.raise_signal(signum)
        pending.append(signum)
        log.warning("stopping once the local Dask cluster has started (a second signal stops at once)")

    for s in kept:
        signal.signal(s, hold)
    if signal.SIGINT in kept and _in_terminal_foreground():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log.info("starting the local Dask cluster: Ctrl-C takes effect once it has started")
    try:
        yield
    finally:
        restore()
    if pending:
        signal.raise_signal(pending[0])  # the handler the process had runs now


def _in_terminal_foreground() -> bool:
    """True when this process is in the foreground job of its terminal (Ctrl-C reaches it)."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


@contextmanager
def kept_environ(names: Iterable[str] | None = None) -> Iterator[None]:
    """Undo the block's changes to ``os.environ``: of the variables ``names`` (None: of any
    variable), leaving every other one as the block left it.

    Dask's nannies, running here for a ``LocalCluster``, set ``OMP_NUM_THREADS=1`` and
    ``MALLOC_TRIM_THRESHOLD_`` in ``os.environ`` before starting each worker, and every
    later subprocess would inherit them.
    """
    saved = dict(os.environ) if names is None else {k: os.environ.get(k) for k in names}
    try:
        yield
    finally:
        for k in set(saved) | (set(os.environ) if names is None else set()):
            old = saved.get(k)
            if os.environ.get(k) == old:
                continue
            if old is None:
                del os.environ[k]
            else:
                os.environ[k] = old


def _nanny_environ() -> set[str]:
    """The variables Dask's nannies set in their own process before starting a worker."""
    import dask

    _distributed()  # its defaults join dask's configuration on import
    names = {"PYTHONHASHSEED"}
    for key in ("distributed.nanny.pre-spawn-environ", "distributed.nanny.environ"):
        names.update(dask.config.get(key, default=None) or {})
    return names


def task_window(client) -> int:
    """Tasks to keep submitted: :data:`TASKS_PER_THREAD` per worker thread (at least 2)."""
    threads = sum(client.nthreads().values())
    return max(2, TASKS_PER_THREAD * threads)


def _submit_all(client, fn: Callable, items: Iterable, args: tuple, window: int | None, name: str):
    token = uuid.uuid4().hex[:10]
    window = window or task_window(client)
    it = enumerate(items)

    def submit():
        try:
            i, item = next(it)
        except StopIteration:
            return None
        return client.submit(fn, item, *args, key=f"{name}-{token}-{i}", pure=False)

    return submit, window


def in_order(client, fn: Callable, items: Iterable, *args, window: int | None = None,
             name: str = "geo-pix2pix") -> Iterator[Any]:
    """Yield ``fn(item, *args)`` for every item, run on the cluster, in the items' order.

    At most ``window`` tasks are submitted and uncollected at any time; a result stays
    on its worker until its turn comes. Futures among ``args`` (scattered data) are
    resolved on the workers, as Dask does.
    """
    submit, window = _submit_all(client, fn, items, args, window, name)
    pending: deque = deque()
    try:
        while True:
            while len(pending) < window:
                fut = submit()
                if fut is None:
                    break
                pending.append(fut)
            if not pending:
                return
            fut = pending.popleft()
            result = fut.result()
            fut.release()
            yield result
    finally:
        if pending:
            client.cancel(list(pending))


def as_done(client, fn: Callable, items: Iterable, *args, window: int | None = None,
            name: str = "geo-pix2pix") -> Iterator[Any]:
    """Like :func:`in_order`, but yield results as they complete."""
    distributed = _distributed()
    submit, window = _submit_all(client, fn, items, args, window, name)
    running = distributed.as_completed()
    outstanding: set = set()

    def add() -> bool:
        fut = submit()
        if fut is None:
            return False
        outstanding.add(fut)
        running.add(fut)
        return True

    try:
        while len(outstanding) < window and add():
            pass
        for fut in running:
            outstanding.discard(fut)
            result = fut.result()
            fut.release()
            add()
            yield result
    finally:
        if outstanding:
            client.cancel(list(outstanding))


_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()
_TUNED: list = []
#: glibc malloc thresholds set in workers (bytes): see :func:`tune_worker_malloc`.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20


def tune_worker_malloc() -> bool:
    """Let glibc reuse freed memory for the model's activations again; True if changed.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (to hand memory back
    to the OS). Setting it turns off glibc's adaptive mmap threshold, so every tensor over
    128 KB is a fresh ``mmap`` whose pages are faulted in and zeroed at each use: the
    default model then costs 1.6× the CPU time per tile (measured in docs/scaling.md).
    This raises both thresholds in this process only; memory stays bounded by the tasks.
    """
    if not os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    from ..heap import set_process_thresholds

    return set_process_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD)


def worker_cached(key, factory: Callable[[], Any]) -> Any:
    """``factory()``, made once per process for each ``key`` and kept (least recently
    used first out, :data:`WORKER_CACHE_SIZE` values)."""
    with _CACHE_LOCK:
        if not _TUNED:
            _TUNED.append(tune_worker_malloc())
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        value = factory()  # under the lock: threads of one worker load a model once
        _CACHE[key] = value
        while len(_CACHE) > WORKER_CACHE_SIZE:
            _CACHE.popitem(last=False)
        return value


def worker_model(spec):
    """The model ``spec`` (a :class:`~geo_pix2pix.model.spec.ModelSpec`) names, loaded once per worker process
    and known by its :meth:`~geo_pix2pix.model.spec.ModelSpec.cache_key`."""
    return worker_cached(spec.cache_key(), spec.load)
