"""Micro-batching of embedding requests and bounded generation, with backpressure.

`EmbeddingBatcher`: concurrent requests put their samples on a bounded queue
(counted in samples); one worker forms micro-batches and embeds each in one
forward pass on a worker thread. A micro-batch takes samples from the waiting
requests in turn (one from each, round after round, in arrival order), up to
`max_batch` samples and `max_cost` (estimated tokens times the batch's
longest sample: what a padded forward pass costs), and waits at most
`max_wait_ms` for company — only while requests arrive closer together than that (the
median of the last eight gaps): a lone client's request is embedded at once, never held
for company that is not coming. A request's future resolves when its last sample
is embedded. So a big request is split into micro-batches and a small one
that arrives behind it rides in the next micro-batch instead of waiting for
the whole big one. A full queue raises `Overloaded` (a 429) instead of
growing memory.

`GenerationLimiter`: at most `size` generation requests waiting or running;
beyond it `Overloaded`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """Queue full: the client should retry later (429, `Retry-After: retry_after` seconds)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(eq=False)  # identity: a job is a key of the micro-batch's parts
class _Job:
    samples: Sequence[Any]
    future: asyncio.Future
    enqueued: float
    taken: int = 0  # samples handed to micro-batches so far
    out: list[Any] = field(default_factory=list)


class EmbeddingBatcher:
    def __init__(self, embed: Callable[[list[Any]], list[Any]], max_batch: int = 32,
                 max_wait_ms: float = 5.0, queue_size: int = 256, enabled: bool = True,
                 on_batch: Callable[[int], None] | None = None, cost: Callable[[Any], int] | None = None,
                 max_cost: int = 0) -> None:
        self.embed = embed
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.queue_size, self.enabled = queue_size, enabled
        self.on_batch = on_batch
        self.cost, self.max_cost = cost, max_cost  # max_cost 0: samples are the only bound
        self.queued = 0  # samples waiting
        self._gaps: deque[float] = deque(maxlen=8)  # seconds between the last requests' arrivals
        self._last_arrival: float | None = None
        self.waited = 0  # times the worker waited for company (tests, metrics)
        self._jobs: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, samples: Sequence[Any]) -> list[Any]:
        if not samples:
            return []
        if self.queued + len(samples) > self.queue_size:
            raise Overloaded(f"embedding queue full ({self.queued} samples waiting)")
        loop = asyncio.get_running_loop()
        if not self.enabled:  # --no-batching: one forward pass per request, in order
            self.queued += len(samples)
            try:
                out = await loop.run_in_executor(self.pool, self.embed, list(samples))
            finally:
                self.queued -= len(samples)
            if self.on_batch:
                self.on_batch(len(samples))
            return out
        assert self._wake is not None, "batcher not started"
        fut = loop.create_future()
        self.queued += len(samples)
        now = time.perf_counter()
        if self._last_arrival is not None:
            self._gaps.append(now - self._last_arrival)
        self._last_arrival = now
        self._jobs.append(_Job(samples, fut, now))
        self._wake.set()
        return await fut

    def _busy(self) -> bool:
        """Requests arrive closer together than the wait for company (the median of the last
        gaps; too few yet to tell: busy, the wait is short)."""
        if len(self._gaps) < 2:
            return True
        return sorted(self._gaps)[len(self._gaps) // 2] <= self.max_wait

    def _pending(self) -> int:
        return sum(len(j.samples) - j.taken for j in self._jobs)

    def _next_batch(self) -> list[tuple[_Job, int]]:
        """(job, position) of the next micro-batch: one sample of each waiting job in turn."""
        for job in [j for j in self._jobs if j.future.done()]:  # clients that went away
            self._drop(job)
        batch: list[tuple[_Job, int]] = []
        longest = 0
        while len(batch) < self.max_batch:
            took = False
            for job in self._jobs:
                if job.taken >= len(job.samples) or len(batch) >= self.max_batch:
                    continue
                if self.cost and self.max_cost:  # a padded batch costs its longest sample, times its size
                    c = max(longest, self.cost(job.samples[job.taken]))
                    if batch and c * (len(batch) + 1) > self.max_cost:
                        return batch
                    longest = c
                batch.append((job, job.taken))
                job.taken += 1
                took = True
            if not took:
                break
        return batch

    async def _run(self) -> None:
        try:
            await self._serve()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # never leave requests waiting on a dead worker
            logger.exception("embedding worker stopped")
            for job in list(self._jobs):
                self._fail(job, e)
            raise

    async def _serve(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not any(j.taken < len(j.samples) for j in self._jobs):
                self._wake.clear()
                await self._wake.wait()
                # a moment for company, unless a full micro-batch is already waiting or no
                # company is coming (requests arrive further apart than the wait)
                deadline = loop.time() + (self.max_wait if self._busy() else 0.0)
                if self._pending() < self.max_batch and deadline > loop.time():
                    self.waited += 1
                while self._pending() < self.max_batch and (left := deadline - loop.time()) > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except asyncio.TimeoutError:
                        break
            batch = self._next_batch()
            if not batch:
                continue
            self.queued -= len(batch)
            jobs = list(dict.fromkeys(j for j, _ in batch))
            try:
                out = await loop.run_in_executor(self.pool, self.embed, [j.samples[k] for j, k in batch])
            except Exception as e:
                if len(jobs) == 1:
                    self._fail(jobs[0], e)
                    continue
                # one request's failure must not fail the others: retry each one's part alone,
                # so only the request that fails on its own gets the error
                logger.warning("embedding micro-batch of %d requests failed (%s): retrying them one by one",
                               len(jobs), e)
                for job in jobs:
                    try:
                        job.out += await loop.run_in_executor(self.pool, self.embed,
                                                              [job.samples[k] for j, k in batch if j is job])
                    except Exception as e1:  # noqa: BLE001 - handed to that request
                        self._fail(job, e1)
                self._finish(jobs)
                continue
            if self.on_batch:
                self.on_batch(len(batch))
            for (job, _), vec in zip(batch, out, strict=True):
                job.out.append(vec)
            self._finish(jobs)

    def _drop(self, job: _Job) -> None:
        self.queued -= len(job.samples) - job.taken
        job.taken = len(job.samples)
        if job in self._jobs:
            self._jobs.remove(job)

    def _fail(self, job: _Job, e: BaseException) -> None:
        self._drop(job)
        if not job.future.done():
            job.future.set_exception(e)

    def _finish(self, jobs: list[_Job]) -> None:
        for job in jobs:
            if job.future.done():  # the client went away (cancelled) or it failed
                self._drop(job)
            elif len(job.out) == len(job.samples):
                self._drop(job)
                job.future.set_result(job.out)


class GenerationLimiter:
    def __init__(self, size: int) -> None:
        self.size = size
        self.active = 0

    def acquire(self) -> None:
        if self.active >= self.size:
            raise Overloaded(f"generation queue full ({self.active} requests)")
        self.active += 1

    def release(self) -> None:
        self.active -= 1
