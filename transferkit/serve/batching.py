"""Dynamic batching: images from concurrent requests that arrive within a few milliseconds share one forward pass."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
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
    arrived: float  # the event loop's clock when submitted


def batch_sizes(max_batch: int) -> list[int]:
    """The batch sizes a forward pass may have: powers of two below `max_batch`, and `max_batch`. Few shapes keep
    a runtime's per-shape memory (ONNX Runtime plans and caches one per input shape) bounded, as Triton's
    `preferred_batch_size` does."""
    return sorted({1 << i for i in range(max(1, max_batch).bit_length()) if 1 << i < max_batch} | {max(1, max_batch)})


class Batcher:
    """Collects items into batches for `run` (a list of items -> a list of results, one each, in order).

    A batch goes when `max_batch` items wait or when its oldest item has waited `max_wait_s`; it takes the largest
    size of `batch_sizes(max_batch)` that the waiting items fill, and the rest go first in the next one. While a
    batch computes (in one worker thread) the next one fills. `close()` answers every item already submitted
    before the worker stops.
    """

    def __init__(self, run: Callable[[list], list], max_batch: int, max_wait_s: float,
                 stats: BatchStats | None = None):
        self.run, self.max_batch, self.max_wait_s = run, max(1, max_batch), max(0.0, max_wait_s)
        self.sizes = batch_sizes(self.max_batch)
        self.stats = stats or BatchStats()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferkit-batch")
        self.worker: asyncio.Task | None = None
        self.closing = False

    async def warm_up(self, make_item: Callable[[int], list]) -> None:
        """Run one batch of each allowed size (`make_item(size)` gives its items) before serving: the runtime
        allocates for every shape now, so memory stays flat under load and no request pays for a first call."""
        loop = asyncio.get_running_loop()
        for size in self.sizes:
            await loop.run_in_executor(self.executor, self.run, make_item(size))

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def submit(self, items: list) -> list:
        """The results for `items` (each may land in a different batch), in order."""
        if self.closing or self.worker is None:
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        jobs = [_Job(item, loop.create_future(), loop.time()) for item in items]
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

    async def _fill(self, pending: deque) -> bool:
        """Move arrivals into `pending` until it holds max_batch items or its oldest has waited max_wait_s;
        True when the stop mark was reached (nothing more will come)."""
        loop = asyncio.get_running_loop()
        while len(pending) < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = pending[0].arrived + self.max_wait_s - loop.time() if pending else None
                if remaining is not None and remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if job is _STOP:
                return True
            pending.append(job)
        return False

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        pending: deque[_Job] = deque()
        stopping = False
        while pending or not stopping:
            if not stopping:
                stopping = await self._fill(pending)
            if not pending:
                continue
            size = max(s for s in self.sizes if s <= len(pending))
            batch = [pending.popleft() for _ in range(size)]
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
