"""Micro-batching of embedding requests and bounded generation, with backpressure.

`EmbeddingBatcher`: concurrent requests put their samples on a bounded queue
(counted in samples); one worker collects up to `max_batch` samples or waits
at most `max_wait_ms`, embeds them in one forward pass on a worker thread and
resolves each request's future. A full queue raises `Overloaded` (a 429)
instead of growing memory.

`GenerationLimiter`: at most `size` generation requests waiting or running;
beyond it `Overloaded`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """Queue full: the client should retry later (429)."""


@dataclass
class _Job:
    samples: Sequence[Any]
    future: asyncio.Future
    enqueued: float


class EmbeddingBatcher:
    def __init__(self, embed: Callable[[list[Any]], list[Any]], max_batch: int = 32,
                 max_wait_ms: float = 5.0, queue_size: int = 256, enabled: bool = True,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.embed = embed
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.queue_size, self.enabled = queue_size, enabled
        self.on_batch = on_batch
        self.queued = 0  # samples waiting
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    def start(self) -> None:
        self._queue = asyncio.Queue()
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
        assert self._queue is not None, "batcher not started"
        fut = loop.create_future()
        self.queued += len(samples)
        await self._queue.put(_Job(samples, fut, time.perf_counter()))
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            jobs, n = [job], len(job.samples)
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                jobs.append(nxt)
                n += len(nxt.samples)
            flat = [s for j in jobs for s in j.samples]
            self.queued -= len(flat)
            try:
                out = await loop.run_in_executor(self.pool, self.embed, flat)
            except Exception as e:
                if len(jobs) == 1:
                    if not job.future.done():
                        job.future.set_exception(e)
                    continue
                # one request's failure must not fail the others: retry each alone,
                # so only the request that fails on its own gets the error
                logger.warning("embedding batch of %d requests failed (%s): retrying them one by one",
                               len(jobs), e)
                for j in jobs:
                    try:
                        res = await loop.run_in_executor(self.pool, self.embed, list(j.samples))
                    except Exception as e1:  # noqa: BLE001 - handed to that request
                        if not j.future.done():
                            j.future.set_exception(e1)
                    else:
                        if not j.future.done():
                            j.future.set_result(res)
                continue
            if self.on_batch:
                self.on_batch(len(flat))
            i = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(out[i : i + len(j.samples)])
                i += len(j.samples)


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
