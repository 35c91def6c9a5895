"""Dynamic batching: images from concurrent requests that arrive within a few milliseconds share one forward pass."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

_STOP = object()


@dataclass
class BatchStats:
    """What the server has done since it started: requests answered and refused, images, forward passes, and how
    many images each pass held."""

    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    refused: Counter = field(default_factory=Counter)   # HTTP status -> requests
    in_flight: int = 0                                   # requests being read, decoded or predicted now
    images: int = 0
    batches: int = 0
    batch_sizes: Counter = field(default_factory=Counter)  # images in a forward pass -> passes
    queued: int = 0                                      # images waiting for a forward pass now

    def as_dict(self) -> dict:
        """JSON-ready counters (the histogram's keys as strings, sorted by size)."""
        return {"uptime_s": round(time.monotonic() - self.started, 3), "requests": self.requests,
                "refused": {str(status): n for status, n in sorted(self.refused.items())},
                "in_flight": self.in_flight, "images": self.images, "batches": self.batches,
                "batch_sizes": {str(size): n for size, n in sorted(self.batch_sizes.items())},
                "mean_batch_size": round(self.images / self.batches, 3) if self.batches else None,
                "queued": self.queued}


@dataclass
class _Job:
    item: Any
    future: asyncio.Future


class Batcher:
    """Collects items into batches for `run` (a list of items -> a list of results, one each, in order).

    A batch starts with the first waiting item and takes whatever else arrives within `max_wait_s` of it, up to
    `max_batch` items; while a batch computes (in one worker thread) the next one fills. `close()` answers every
    item already submitted before the worker stops.
    """

    def __init__(self, run: Callable[[list], list], max_batch: int, max_wait_s: float,
                 stats: BatchStats | None = None):
        self.run, self.max_batch, self.max_wait_s = run, max(1, max_batch), max(0.0, max_wait_s)
        self.stats = stats or BatchStats()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferkit-batch")
        self.worker: asyncio.Task | None = None
        self.closing = False

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def submit(self, items: list) -> list:
        """The results for `items` (each may land in a different batch), in order."""
        if self.closing or self.worker is None:
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        jobs = [_Job(item, loop.create_future()) for item in items]
        for job in jobs:
            self.queue.put_nowait(job)
        self.stats.queued += len(jobs)
        return list(await asyncio.gather(*(job.future for job in jobs)))

    async def close(self) -> None:
        """Answer everything submitted, then stop the worker and its thread."""
        if self.worker is not None and not self.closing:
            self.closing = True
            self.queue.put_nowait(_STOP)
            await self.worker
        self.executor.shutdown(wait=True)

    async def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` and what else arrives in time; True when the stop mark was reached."""
        batch = [first]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if job is _STOP:
                return batch, True
            batch.append(job)
        return batch, False

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            first = await self.queue.get()
            if first is _STOP:
                break
            batch, stop = await self._collect(first)
            self.stats.queued -= len(batch)
            try:
                results = await loop.run_in_executor(self.executor, self.run, [job.item for job in batch])
            except Exception as exc:  # the requests in this batch fail with it; the server goes on
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.images += len(batch)
            self.stats.batch_sizes[len(batch)] += 1
            for job, result in zip(batch, results):
                if not job.future.done():
                    job.future.set_result(result)
