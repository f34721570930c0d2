"""Coalesced, bounded, cancellable work for the tile server (asyncio side).

Requests ask for *units* (a block of tiles, an overview tile; see :mod:`.cache`), not
tiles, so that every request for a tile of one block waits for the same single job
(renderd and MapProxy coalesce metatile requests the same way). :class:`Coalescer`:

- runs at most ``workers`` jobs at once on its own threads (the model pool: one worker
  on the CPU, whose torch threads use every core; one device queue on a GPU);
- keeps at most ``queue_size`` jobs waiting; a request that would start one more gets
  :class:`Overloaded`, which the server answers with ``503`` and ``Retry-After`` (the
  queue's expected wait), instead of letting the queue and memory grow;
- counts the requests waiting for each job: when the last one's client has gone away
  before its job started, the job is dropped from the queue, never rendered.

Everything here runs on the event loop's thread except the jobs themselves.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["ClientGone", "Coalescer", "Overloaded"]

#: Seconds a job is assumed to take before one has been timed (Retry-After's first guess).
FIRST_GUESS = 1.0
#: Retry-After is capped: a client told to wait longer than this would rather give up.
MAX_RETRY_AFTER = 60


class Overloaded(Exception):
    """The queue is full (or the server is stopping): answer 503 with ``retry_after`` seconds."""

    def __init__(self, retry_after: int, why: str) -> None:
        super().__init__(why)
        self.retry_after = retry_after


class ClientGone(Exception):
    """Every client waiting for the work has gone away."""


@dataclass(eq=False)
class _Job:
    unit: Hashable
    future: asyncio.Future
    waiters: int = 0
    started: bool = False


@dataclass(eq=False)
class _Shared:
    task: asyncio.Task
    abandoned: asyncio.Future  # set when its last waiter leaves
    waiters: int = 0


@dataclass
class Stats:
    jobs: int = 0  # jobs run
    coalesced: int = 0  # requests that joined a job already queued or running
    dropped: int = 0  # queued jobs dropped: their clients went away
    rejected: int = 0  # requests answered 503: the queue was full


class Coalescer:
    """One job per unit at a time, on ``workers`` threads, with at most ``queue_size`` waiting."""

    def __init__(self, work: Callable[[Hashable], Any], *, workers: int = 1, queue_size: int = 32,
                 on_done: Callable[[Hashable, Any], None] | None = None) -> None:
        self.work, self.workers, self.queue_size, self.on_done = work, workers, queue_size, on_done
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="geo-pix2pix-render")
        self.queue: deque[_Job] = deque()
        self.jobs: dict[Hashable, _Job] = {}
        self.shared: dict[Hashable, _Shared] = {}
        self.running = 0
        self.closing = False
        self.stats = Stats()
        self._seconds: float | None = None  # running mean of a job's duration
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        """Start the worker tasks (in the running event loop)."""
        self._wake = asyncio.Event()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    # -- asking -----------------------------------------------------------------------------
    async def get(self, unit: Hashable, gone: Awaitable | None = None):
        """The result of ``unit``'s job, queued unless one is already queued or running.

        ``gone``: a future done when the client has gone away; raises :class:`ClientGone`
        then (and the job is dropped if nobody else waits and it has not started).
        """
        if self.closing:
            raise Overloaded(self.retry_after(), "the server is stopping")
        job = self.jobs.get(unit)
        if job is None:
            if len(self.queue) >= self.queue_size:
                self.stats.rejected += 1
                raise Overloaded(self.retry_after(), f"{len(self.queue)} jobs are queued, the most allowed")
            job = _Job(unit, asyncio.get_running_loop().create_future())
            job.future.add_done_callback(_retrieve)
            self.jobs[unit] = job
            self.queue.append(job)
            self._wake.set()
        else:
            self.stats.coalesced += 1
        job.waiters += 1
        try:
            if gone is None:
                return await asyncio.shield(job.future)
            await asyncio.wait({job.future, gone}, return_when=asyncio.FIRST_COMPLETED)
            if job.future.done():
                return job.future.result()
            raise ClientGone()
        finally:
            job.waiters -= 1
            if job.waiters == 0 and not job.started and not job.future.done():
                self.queue.remove(job)
                del self.jobs[unit]
                job.future.cancel()
                self.stats.dropped += 1

    async def shared_task(self, unit: Hashable, make: Callable[[asyncio.Future], Awaitable],
                          gone: Awaitable | None = None):
        """Run the coroutine ``make(abandoned)`` once for every concurrent request of ``unit``
        (work made of other units' jobs: an overview tile and its children). ``abandoned``
        is done when its last waiter has gone; it passes that on to the jobs it waits for."""
        entry = self.shared.get(unit)
        if entry is None:
            abandoned = asyncio.get_running_loop().create_future()
            entry = _Shared(asyncio.ensure_future(make(abandoned)), abandoned)
            entry.task.add_done_callback(_retrieve)
            entry.task.add_done_callback(lambda _t, e=entry: self._forget(unit, e))
            self.shared[unit] = entry
        entry.waiters += 1
        try:
            if gone is None:
                return await asyncio.shield(entry.task)
            await asyncio.wait({entry.task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if entry.task.done():
                return entry.task.result()
            raise ClientGone()
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and not entry.task.done():
                entry.abandoned.set_result(None)
                self._forget(unit, entry)  # a later request starts afresh

    def _forget(self, unit: Hashable, entry: _Shared) -> None:
        if self.shared.get(unit) is entry:
            del self.shared[unit]

    def retry_after(self) -> int:
        """Seconds until the queue has room again, from the jobs' mean duration."""
        per_job = self._seconds if self._seconds is not None else FIRST_GUESS
        ahead = len(self.queue) + self.running
        return int(min(MAX_RETRY_AFTER, max(1, math.ceil(ahead * per_job / self.workers))))

    # -- running ----------------------------------------------------------------------------
    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                if self.closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            job = self.queue.popleft()
            job.started = True
            self.running += 1
            t0 = time.monotonic()
            try:
                result = await loop.run_in_executor(self.pool, self.work, job.unit)
            except Exception as exc:
                job.future.set_exception(exc)
            else:
                if self.on_done is not None:
                    self.on_done(job.unit, result)
                job.future.set_result(result)
            finally:
                self.running -= 1
                self.jobs.pop(job.unit, None)
                self.stats.jobs += 1
                took = time.monotonic() - t0
                self._seconds = took if self._seconds is None else 0.8 * self._seconds + 0.2 * took

    def begin_close(self) -> None:
        """Stop taking work: queued jobs fail with :class:`Overloaded` (their requests get 503);
        running ones go on to the end (their tiles and rows are written whole)."""
        self.closing = True
        while self.queue:
            job = self.queue.popleft()
            self.jobs.pop(job.unit, None)
            job.future.set_exception(Overloaded(1, "the server is stopping"))
        if self._wake is not None:
            self._wake.set()

    async def close(self) -> None:
        """:meth:`begin_close`, then wait for the running jobs to finish."""
        self.begin_close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.pool.shutdown(wait=True)


def _retrieve(fut: asyncio.Future) -> None:
    """Mark a future's exception as seen: nobody may be left to await it (all clients gone)."""
    if not fut.cancelled():
        fut.exception()
