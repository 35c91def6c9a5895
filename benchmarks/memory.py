"""Peak memory of this process and its children (DataLoader workers), sampled from /proc while a phase runs."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _pss_kib(pid: int) -> int:
    """Proportional set size: pages shared between a process and its forked workers are counted once overall."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mib(pid: int | None = None) -> float:
    """PSS of a process and all its descendants, in MiB."""
    pid = pid or os.getpid()
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += _pss_kib(current)
        todo += _children(current)
    return total / 1024


class PeakMemory:
    """Context manager: the highest process-tree PSS (MiB) seen while the block runs, sampled every `every` s."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak = every, 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_mib())
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakMemory":
        self.peak = tree_pss_mib()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_pss_mib())


def measure(fn, *args, **kwargs) -> tuple[object, float, dict]:
    """(fn's result, wall seconds, {peak, start} process-tree PSS in MiB) of one call, after a garbage collection."""
    gc.collect()
    with PeakMemory() as memory:
        start_pss = memory.peak
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds = time.perf_counter() - start
    return result, seconds, {"peak_pss_mib": memory.peak, "start_pss_mib": start_pss}
