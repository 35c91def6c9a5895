"""What sharing decoded images and frozen-backbone features between the folds of `transferkit cv` saves.

    flock /tmp/transferkit-bench.lock python benchmarks/cv_reuse.py --data DIR [--folds 3] [--limit 600]
        [--preset fast] [--json OUT]

Runs the same cross-validation twice, each in a fresh process: the folds sharing their caches (what `cv` does)
and each fold computing its own. Reports wall time, peak resident memory, the seconds spent extracting features,
and each run's mean held-out accuracy (the two must agree: the features are the same numbers).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path


def one_run(data: str, folds: int, limit: int, preset: str, share: bool, queue) -> None:
    """A cross-validation in this (fresh) process; puts its measurements on `queue`."""
    import io

    from rich.console import Console

    import transferkit  # noqa: F401  (registers the built-ins)
    from transferkit.run.cv import start_cv

    log = io.StringIO()
    with tempfile.TemporaryDirectory() as output:
        started = start_cv(data, folds, preset=preset, overrides=[f"data.limit={limit}", "train.device=cpu"],
                           output=output)
        began = time.perf_counter()
        result = started.run(console=Console(file=log, width=200), progress=False, share_caches=share)
        wall = time.perf_counter() - began
    extraction = [float(line.split("computed in ")[1].split("s")[0]) for line in log.getvalue().splitlines()
                  if "feature cache:" in line]
    queue.put({"shared": share, "wall_seconds": round(wall, 1), "feature_seconds": [round(x, 1) for x in extraction],
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               "val_top1_accuracy": result.metrics["val_top1_accuracy"],
               "test_top1_accuracy": result.metrics["test_top1_accuracy"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    rows = []
    for share in (True, False):
        queue = context.Queue()
        process = context.Process(target=one_run, args=(args.data, args.folds, args.limit, args.preset, share, queue))
        process.start()
        rows.append(queue.get())
        process.join()
        print(json.dumps(rows[-1]), flush=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    report = {"date": str(date.today()), "data": args.data, "folds": args.folds, "limit": args.limit,
              "preset": args.preset, "load_average_at_end": load, "runs": rows,
              "wall_ratio_unshared_to_shared": round(rows[1]["wall_seconds"] / rows[0]["wall_seconds"], 2)}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
