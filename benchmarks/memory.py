"""Peak resident memory of transferkit's CPU training run against the plain tutorial loop, each in a fresh process.

    python benchmarks/memory.py --data DIR [--limit 500] [--batch-size 128] [--image-size 224] [--epochs 1]
                                [--sides tutorial transferkit ...] [--json OUT]

Every side runs in its own fresh child process (so none inherits another's heap or malloc settings), on
the same N photos per split, network, initial weights, batch size and image size (throughput.py's recipe
and tutorial loop). For each it reports the peak resident set size of the child as the kernel counts it
(ru_maxrss from wait4, what /usr/bin/time -v prints), the peak of the summed RSS of the child and its
DataLoader workers (sampled every 0.1 s), training images/s, and for transferkit the peak of each phase
(cache build, training, evaluation; VmHWM reset between phases) with glibc's heap figures after it.
The diagnostic sides switch one suspect off at a time.

The module also provides `measure` and `PeakMemory` (process-tree PSS while a call runs) for throughput.py.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
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


# --- one command: transferkit's run against the tutorial loop, each in a fresh process ----------------

# side -> (which loop, recipe overrides, environment, call keep_freed_memory() first, patch out fork_rng)
SIDES: dict[str, tuple[str, dict, dict, bool, bool]] = {
    "tutorial": ("tutorial", {}, {}, False, False),
    "transferkit": ("transferkit", {}, {}, False, False),
    "transferkit-kept-heap": ("transferkit", {}, {"TRANSFERKIT_CPU_ALLOCATOR": "heap"}, False, False),
    "transferkit-page-pool": ("transferkit", {}, {"TRANSFERKIT_CPU_ALLOCATOR": "page-pool"}, False, False),
    "transferkit-huge-pages": ("transferkit", {}, {"TRANSFERKIT_CPU_ALLOCATOR": "huge-pages"}, False, False),
    "transferkit-malloc-default": ("transferkit", {}, {"TRANSFERKIT_CPU_ALLOCATOR": "default"}, False, False),
    "transferkit-no-cache": ("transferkit", {"data": {"cache": "none"}}, {}, False, False),
    "transferkit-contiguous": ("transferkit", {"train": {"channels_last": False}}, {}, False, False),
    "transferkit-no-fork-rng": ("transferkit", {}, {}, False, True),
    "tutorial-kept-malloc": ("tutorial", {}, {}, True, False),
    "transferkit-thp-mmap": ("transferkit", {}, {"TRANSFERKIT_CPU_ALLOCATOR": "default", "THP_MEM_ALLOC_ENABLE": "1"},
                             False, False),
    "transferkit-mmap-256M": ("transferkit", {}, {"TRANSFERKIT_CPU_ALLOCATOR": "default",
                                                  "MALLOC_MMAP_THRESHOLD_": str(256 << 20),
                                                  "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}, False, False),
}


def _status_kib(pid: int | str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mib(pid: int | None = None) -> float:
    """Summed RSS of a process and all its descendants (DataLoader workers), in MiB."""
    pid = pid or os.getpid()
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += _status_kib(current, "VmRSS")
        todo += _children(current)
    return total / 1024


def heap_mib() -> dict:
    """glibc's mallinfo2 for the whole process, in MiB: heap from brk/arenas, mmap'd blocks, in use, free but kept."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    mib = 2**20
    figures = {"heap": info.arena / mib, "mmapped": info.hblkhd / mib, "in_use": (info.uordblks + info.hblkhd) / mib,
               "free_kept": info.fordblks / mib}
    from transferkit import cpu_memory

    if cpu_memory._mode == "page-pool":
        from transferkit.native import page_pool

        pool = page_pool.stats()
        figures.update(pool_live=pool["live"] / mib, pool_free=pool["pooled"] / mib, pool_peak=pool["peak_live"] / mib)
    return figures


class Phases:
    """Peak RSS of this process per phase (VmHWM, reset at each phase start) and of its process tree (sampled)."""

    def __init__(self, every: float = 0.1):
        self.rows: list[dict] = []
        self.current, self.tree_peak, self.every = "start-up", 0.0, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.tree_peak = max(self.tree_peak, tree_rss_mib())
            self._stop.wait(self.every)

    def start(self, name: str, reset: bool = True) -> None:
        """Close the current phase (its peak RSS and heap figures) and begin `name`."""
        self.tree_peak = max(self.tree_peak, tree_rss_mib())
        self.rows.append({"phase": self.current, "peak_rss_mib": _status_kib("self", "VmHWM") / 1024,
                          "end_rss_mib": _status_kib("self", "VmRSS") / 1024, **heap_mib()})
        if reset:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (and so ru_maxrss) to the current RSS
            except OSError:
                pass
        self.current = name

    def stop(self) -> None:
        """Close the last phase and stop sampling."""
        self.start("", reset=False)
        self._stop.set()
        self._thread.join()


def _instrument(phases: Phases) -> None:
    """Mark transferkit's phases: building loaders (the decoded-image cache), each training epoch, each evaluation."""
    import torch

    from transferkit.engine.trainer import Trainer
    from transferkit.run import assemble as assembly

    def wrap(owner, name: str, label):
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            phases.start(label(args, kwargs))
            try:
                return original(*args, **kwargs)
            finally:
                phases.start("between")
        setattr(owner, name, wrapped)

    steps = [0]
    step = torch.optim.SGD.step

    def counted(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        steps[0] += 1
        phases.start(f"  step {steps[0] + 1} of the epoch")
        return result
    torch.optim.SGD.step = counted
    wrap(assembly, "build_loaders", lambda a, k: "build loaders + caches")
    wrap(Trainer, "train_epoch", lambda a, k: f"train epoch {a[2]}")
    wrap(Trainer, "evaluate", lambda a, k: f"evaluate {a[2] if len(a) > 2 else k.get('label', 'test')}")


def _child(side: str, settings: dict, out: str) -> None:
    import contextlib
    import json

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import throughput
    from transferkit.cpu_memory import keep_freed_memory
    from transferkit.recipe.merge import deep_merge

    kind, overrides, _, keep, no_fork_rng = SIDES[side]
    args = argparse.Namespace(**settings)
    raw = deep_merge(throughput.recipe(settings["data"], settings["backbone"], args), overrides)
    if keep:
        keep_freed_memory()
    if no_fork_rng:
        torch.random.fork_rng = lambda *a, **k: contextlib.nullcontext()
    phases = Phases()
    if kind == "transferkit":
        _instrument(phases)
    phases.start("run", reset=False)
    start = time.perf_counter()
    result = (throughput.transferkit_run if kind == "transferkit" else throughput.tutorial_loop)(raw)
    seconds = time.perf_counter() - start
    phases.stop()
    from transferkit import cpu_memory

    Path(out).write_text(json.dumps({**result, "seconds": seconds, "allocator": cpu_memory._mode or "default", "tree_peak_rss_mib": phases.tree_peak,
                                     "phases": phases.rows[1:] if kind == "transferkit" else []}))


def _speed_child(side: str, settings: dict, out: str) -> None:
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import throughput

    args = argparse.Namespace(**{**settings, "limit": 16})
    raw = throughput.recipe(settings["data"], settings["backbone"], args)
    result = throughput.model_only(raw, True, settings["steps"])
    from transferkit import cpu_memory

    Path(out).write_text(json.dumps({**result, "allocator": cpu_memory._mode, "peak_rss_mib": _status_kib("self", "VmHWM") / 1024}))


def speed(sides: list[str], settings: dict, rounds: int) -> dict:
    """Model-only training images/s (channels_last) of each side's allocator setting, fresh processes, interleaved."""
    import json
    import subprocess
    import tempfile

    best: dict[str, dict] = {}
    for _ in range(rounds):
        for side in sides:
            with tempfile.TemporaryDirectory() as tmp:
                out = str(Path(tmp) / "result.json")
                subprocess.run([sys.executable, __file__, "--speed-child", side, json.dumps(settings), out],
                               env={**os.environ, **SIDES[side][2]}, check=True)
                result = json.loads(Path(out).read_text())
            print(f"  {side}: {result['images_per_s']:.2f} img/s model-only, peak RSS {result['peak_rss_mib']:.0f} MiB, "
                  f"allocator {result['allocator']}",
                  flush=True)
            if result["images_per_s"] > best.get(side, {}).get("images_per_s", 0):
                best[side] = result
    return best


def run_side(side: str, settings: dict) -> dict:
    """One side in a fresh child process: its figures, and its peak RSS as wait4 reports it."""
    import json
    import subprocess
    import tempfile

    env = {**os.environ, **SIDES[side][2]}
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        proc = subprocess.Popen([sys.executable, __file__, "--child", side, json.dumps(settings), out], env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{side}: child exited with {proc.returncode}")
        result = json.loads(Path(out).read_text())
    # VmHWM was reset at each phase start, so the run's peak is the highest phase peak (ru_maxrss without phases)
    peak = max([usage.ru_maxrss / 1024] if not result["phases"] else [p["peak_rss_mib"] for p in result["phases"]])
    return {"side": side, "max_rss_mib": peak, **result}


def print_report(report: dict) -> None:
    """The sides as a table, then transferkit's phases."""
    s = report["settings"]
    print(f"\n{report['command']}")
    print(f"{s['backbone']}, {s['limit']} images per split, batch {s['batch_size']}, {s['image_size']} px, "
          f"{s['epochs']} epoch(s), {report['cores']} cores, torch {report['torch']}\n")
    base = next((r for r in report["sides"] if r["side"] == "tutorial"), report["sides"][0])
    print(f"{'side':<30}{'peak RSS MiB':>13}{'tree RSS MiB':>13}{'x tutorial':>11}{'train img/s':>12}{'wall s':>8}"
          f"  allocator")
    for r in report["sides"]:
        print(f"{r['side']:<30}{r['max_rss_mib']:>13.0f}{r['tree_peak_rss_mib']:>13.0f}"
              f"{r['max_rss_mib'] / base['max_rss_mib']:>10.2f}x{r['train_images_per_s']:>12.2f}{r['seconds']:>8.0f}"
              f"  {r['allocator']}")
    for r in report["sides"]:
        if not r["phases"] or r["side"].startswith("tutorial"):
            continue
        print(f"\n{r['side']} by phase (MiB){'':<8}{'peak RSS':>9}{'end RSS':>9}{'heap':>8}{'mmapped':>9}"
              f"{'in use':>8}{'free kept':>10}")
        for p in r["phases"]:
            print(f"  {p['phase']:<34}{p['peak_rss_mib']:>7.0f}{p['end_rss_mib']:>9.0f}{p.get('heap', 0):>8.0f}"
                  f"{p.get('mmapped', 0):>9.0f}{p.get('in_use', 0):>8.0f}{p.get('free_kept', 0):>10.0f}")


def main(argv: list[str] | None = None) -> dict:
    """Run the chosen sides one after another, print the table, optionally write JSON."""
    import json
    import platform

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="image folder with train/ and test/ class folders")
    parser.add_argument("--limit", type=int, default=500, help="images per split")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--sides", nargs="+", default=["tutorial", "transferkit"], choices=list(SIDES))
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--speed-rounds", type=int, default=0,
                        help="then model-only training images/s of the transferkit sides' allocator settings, best of "
                             "this many interleaved rounds of fresh processes")
    parser.add_argument("--speed-batch", type=int, default=32)
    parser.add_argument("--speed-steps", type=int, default=3)
    args = parser.parse_args(argv)
    settings = {"data": str(Path(args.data).resolve()), "limit": args.limit, "batch_size": args.batch_size,
                "image_size": args.image_size, "epochs": args.epochs, "backbone": args.backbone}
    import torch

    report = {"command": " ".join(["python", "benchmarks/memory.py", *(argv if argv is not None else sys.argv[1:])]),
              "settings": settings, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
              "platform": platform.platform(), "sides": []}
    for side in [] if args.speed_rounds and args.limit == 0 else args.sides:
        row = run_side(side, settings)
        print(f"  {side}: peak RSS {row['max_rss_mib']:.0f} MiB, {row['train_images_per_s']:.2f} img/s, "
              f"{row['seconds']:.0f}s, allocator {row['allocator']}", flush=True)
        report["sides"].append(row)
    if args.speed_rounds:
        speed_sides = [side for side in args.sides if SIDES[side][0] == "transferkit"]
        report["speed"] = {"batch": args.speed_batch, "steps": args.speed_steps, "rounds": args.speed_rounds,
                           "best": speed(speed_sides, {**settings, "batch_size": args.speed_batch,
                                                       "steps": args.speed_steps}, args.speed_rounds)}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if report["sides"]:
        print_report(report)
    if "speed" in report:
        sp = report["speed"]
        print(f"\nmodel-only training step, batch {sp['batch']}, channels_last, best of {sp['rounds']} rounds of "
              f"{sp['steps']} steps after a warm-up:")
        for side, r in sp["best"].items():
            print(f"  {side:<30}{r['images_per_s']:>8.2f} img/s{r['peak_rss_mib']:>9.0f} MiB peak RSS")
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--speed-child":
        _speed_child(sys.argv[2], __import__("json").loads(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], __import__("json").loads(sys.argv[3]), sys.argv[4])
    else:
        main()
