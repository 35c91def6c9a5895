"""Issue 21's int8 goal: int8 ONNX at least 1.5x the fp32 ONNX images/s on this CPU, within 1 point of fp32's top-1.

    flock /tmp/transferkit-bench.lock python benchmarks/deploy_formats.py RUN_DIR [--batch 32] [--rounds 6]
        [--limit N] [--json OUT]

RUN_DIR is a trained run (EfficientNet-Lite0 on clothing-small: `transferkit fit ../shared/data/clothing-small
--preset fast`). This is `transferkit benchmark RUN_DIR` (every format exported, checked and measured in one process,
speed in alternating rounds) plus, for each format, the peak resident memory of a fresh process that loads the
file and predicts one batch, the load average before and after, and the goal's verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict
from datetime import date
from pathlib import Path

from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transferkit.run.benchmark import BenchmarkSettings, run_benchmark  # noqa: E402
from transferkit.run.benchmark_report import print_benchmark, write_benchmark  # noqa: E402

GOAL_SPEEDUP, GOAL_ACCURACY_DROP = 1.5, 0.01

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec
MEMORY_PROBE = """
import re, sys, torch, transferkit
model = transferkit.load(sys.argv[1], device="cpu")
model.logits(torch.zeros(int(sys.argv[2]), 3, model.preprocessing.input_size, model.preprocessing.input_size,
                         dtype=torch.uint8))
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024)
"""


def peak_memory_mb(path: str, batch: int) -> float:
    """Peak resident MB of a fresh process that loads `path` and computes the logits of one batch."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, path, str(batch)], capture_output=True, text=True,
                          env=env, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calibration", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=6, help="alternating speed rounds")
    parser.add_argument("--limit", type=int, default=None, help="at most N test images (default: all)")
    parser.add_argument("--output", type=Path, help="folder for the exports and benchmark.* (default: a temporary one)")
    parser.add_argument("--json", type=Path,
                        default=REPO / "benchmarks" / "results" / f"deploy-export_formats_{date.today()}.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    console = Console(stderr=True, soft_wrap=True)
    with tempfile.TemporaryDirectory() as work:
        output = args.output or Path(work)
        settings = BenchmarkSettings(batch=args.batch, calibration=args.calibration, rounds=args.rounds,
                                     limit=args.limit)
        result = run_benchmark(args.run, output, settings, console)
        write_benchmark(result, output)
        print_benchmark(result, Console(soft_wrap=True))
        load_after = os.getloadavg()
        memory = {row.format: peak_memory_mb(row.file, args.batch) for row in result.rows if row.status == "ok"}
    rows = {row.format: row for row in result.rows}
    speedup = rows["onnx-int8"].images_per_s / rows["onnx"].images_per_s
    drop = rows["onnx"].accuracy - rows["onnx-int8"].accuracy
    met = speedup >= GOAL_SPEEDUP and drop <= GOAL_ACCURACY_DROP
    verdict = (f"int8 / fp32 ONNX images/s {speedup:.2f}x (goal >= {GOAL_SPEEDUP}x); top-1 {rows['onnx-int8'].accuracy:.3f}"
               f" vs {rows['onnx'].accuracy:.3f} (drop {drop * 100:+.1f} points, goal <= {GOAL_ACCURACY_DROP * 100:.0f});"
               f" {'MET' if met else 'NOT MET'}")
    print(verdict)
    print("peak resident MB, fresh process loading the file and predicting one batch: "
          + ", ".join(f"{name} {mb:.0f}" for name, mb in memory.items()))
    report = {"date": str(date.today()), **result.to_dict(), "load_average_before": load_before,
              "load_average_after": load_after, "peak_rss_mb_benchmark_process":
              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_rss_mb_per_format": memory,
              "goal": {"speedup": speedup, "accuracy_drop": drop, "met": met}, "settings": asdict(settings)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
