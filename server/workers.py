"""Ingestion workers: uploads are read and chunked in processes of their own.

Parsing a document (HTML, Markdown, PDF, JSONL with images) is CPU work in
pure Python or C that holds the GIL; in the serving process it would stall
every other request (a `/health` probe included). `IngestPool` runs it in
`workers` single-process executors (spawned, never forked from the serving
process and its threads), so the serving process only diffs, embeds and
writes. Each upload is one job in one worker:

- at most `workers` jobs run and `queue` more wait; beyond that `Overloaded`
  (a 429 with Retry-After);
- a job that runs longer than `timeout_s` has its worker killed and replaced
  (`ReadTimeout`: the upload is refused, naming its files and the limit), so
  no input can hold a worker for longer;
- a worker that dies (killed by the OS for memory) is replaced as well
  (`WorkerDied`).

Inside the worker, the upload's images are charged to one pixel budget
(`model.sample.pixel_budget`, the input policy's `max_request_pixels`).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .batching import Overloaded

logger = logging.getLogger(__name__)


class ReadTimeout(RuntimeError):
    """A job ran past the pool's time limit; its worker was replaced."""


class WorkerDied(RuntimeError):
    """The worker running a job exited (killed by the OS, or crashed)."""


def read_sources(reader: Any, sources: Sequence[Any], max_pixels: int) -> list[Any]:
    """In a worker: `reader(sources)` with the upload's images on one pixel budget."""
    from model.sample import pixel_budget

    with pixel_budget(max_pixels or None):
        return reader(sources)


def _warm() -> int:
    """In a worker: import what reading needs before the first job, and say who we are."""
    import index.ingest  # noqa: F401 - the import is the warm-up

    return os.getpid()


class _Slot:
    def __init__(self) -> None:
        self.executor: ProcessPoolExecutor | None = None
        self.pid: int | None = None

    async def start(self) -> None:
        self.executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self.pid = await asyncio.get_running_loop().run_in_executor(self.executor, _warm)

    def close(self) -> None:
        """A graceful stop (the worker is idle, or its job is cancelled)."""
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor, self.pid = None, None

    def kill(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor, self.pid = None, None


class IngestPool:
    def __init__(self, workers: int = 1, queue: int = 8, timeout_s: float = 60.0) -> None:
        self.workers, self.queue, self.timeout_s = max(1, workers), max(0, queue), timeout_s
        self.active = 0  # jobs running or waiting
        self._slots: list[_Slot] = []
        self._free: asyncio.Queue[_Slot] | None = None

    def start(self) -> None:
        """Workers are spawned at their first job (a server that never ingests runs none)."""
        self._free = asyncio.Queue()
        self._slots = [_Slot() for _ in range(self.workers)]
        for s in self._slots:
            self._free.put_nowait(s)

    async def stop(self) -> None:
        busy = self.active > 0  # a job still running is not waited for
        for s in self._slots:
            if busy:
                s.kill()
            else:
                await asyncio.to_thread(s.close)

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self._slots if s.pid is not None]

    async def run(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)` in a worker (fn and args picklable), within the limits above."""
        if self.active >= self.workers + self.queue:
            raise Overloaded(f"ingestion busy ({self.active} uploads running or waiting)",
                             retry_after=max(1, round(self.timeout_s / 4)))
        assert self._free is not None, "ingestion pool not started"
        self.active += 1
        try:
            slot = await self._free.get()
            try:
                if slot.executor is None:
                    await slot.start()
                assert slot.executor is not None
                fut = asyncio.get_running_loop().run_in_executor(slot.executor, fn, *args)
                try:
                    return await asyncio.wait_for(fut, self.timeout_s)
                except asyncio.TimeoutError:
                    logger.warning("ingestion worker %s ran past %g s: replaced", slot.pid, self.timeout_s)
                    slot.kill()
                    raise ReadTimeout(f"reading took longer than the limit of {self.timeout_s:g} s") from None
                except asyncio.CancelledError:  # the client went away: so does its job
                    slot.kill()
                    raise
                except BrokenProcessPool:
                    logger.warning("ingestion worker %s died: replaced", slot.pid)
                    slot.kill()
                    raise WorkerDied("the reading process died (out of memory?)") from None
            finally:
                self._free.put_nowait(slot)
        finally:
            self.active -= 1
