"""Presets against the seed's recipe on real photos: wall time, peak resident memory and test accuracy.

Each side runs as its own `transferkit` process (so peak RSS is that run's alone, read with os.wait4):
the seed's way (examples/clothing/recipe.yaml, variant finetune: EfficientNet-Lite0 fine-tuned with
the head at 10x) and `transferkit fit --preset fast|balanced|best`, for each seed.

    python benchmarks/presets.py --data ../shared/data/clothing-small --seeds 0 1 2
    python benchmarks/presets.py --data ../shared/data/clothing-small --limit 600 --seeds 0   # quicker

Accuracy is the test accuracy of the weights best.pt holds: every side selects it on the validation
split (clothing-small's validation/ folder, which the seed's recipe finds by default too).
Results are merged into benchmarks/results/presets_<date>.json by side and seed, so sides or seeds
measured in separate calls the same day end up in one file; `--keep-runs DIR` keeps the run folders.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_side(command: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in bytes, exit code) of one process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status:
        sys.stderr.write(process.stderr.read()[-3000:])
    return wall, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def best_test_accuracy(run_root: Path) -> tuple[float, int, dict]:
    """Test accuracy at the epoch best.pt holds, the number of epochs trained, and how the run's one variant
    spent its time (summary.json's `time`)."""
    variant = next(p for p in run_root.iterdir() if (p / "summary.json").is_file())
    summary = json.loads((variant / "summary.json").read_text())
    history = json.loads((variant / "metrics.json").read_text())
    epoch = summary.get("best_epoch") or len(history)
    return history[epoch - 1]["test_accuracy"], len(history), summary.get("time", {})


def main(argv: list[str] | None = None) -> dict:
    """Run every side for every seed; print a table and write benchmarks/results/presets_<date>.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with train/ and test/ (and validation/)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--limit", type=int, default=None, help="data.limit: at most this many images per split")
    parser.add_argument("--sides", nargs="+", default=["seed", "fast", "balanced", "best"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--keep-runs", type=Path, default=None, help="keep the run folders here (default: deleted)")
    args = parser.parse_args(argv)
    data = str(Path(args.data).resolve())
    common = ["--no-progress", "--set", "train.device=cpu"] + (["--set", f"data.limit={args.limit}"] if args.limit else [])
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        scratch = args.keep_runs or temporary
        for seed in args.seeds:
            for side in args.sides:
                out = Path(scratch) / f"{side}-{seed}"
                cli = [sys.executable, "-m", "transferkit.cli"]
                if side == "seed":
                    command = [*cli, "run", str(REPO / "examples/clothing/recipe.yaml"), "--variant", "finetune",
                               "--set", f"data.root={data}", "--set", f"seed={seed}", "--output", str(out), *common]
                else:
                    command = [*cli, "fit", data, "--preset", side, "--seed", str(seed), "--device", "cpu",
                               "--output", str(out), *common]
                wall, rss, code = run_side(command)
                accuracy, epochs, spent = (best_test_accuracy(next(out.iterdir())) if code == 0
                                           else (float("nan"), 0, {}))
                rows.append({"side": side, "seed": seed, "wall_seconds": round(wall, 1),
                             "peak_rss_gb": round(rss / 1e9, 2), "test_accuracy": accuracy, "epochs": epochs,
                             "exit_code": code, "time": spent})
                print(f"{side:<9} seed {seed}: {wall:7.0f}s  {rss / 1e9:5.2f} GB peak RSS  "
                      f"test acc {accuracy:.3f}  ({epochs} epochs)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"presets_{time.strftime('%Y-%m-%d')}{'_limit' + str(args.limit) if args.limit else ''}.json"
    if path.is_file():  # a day's runs of other sides or seeds kept; a side and seed measured again replaced
        measured = {(row["side"], row["seed"]) for row in rows}
        earlier = json.loads(path.read_text())["rows"]
        rows = [row for row in earlier if (row["side"], row["seed"]) not in measured] + rows
    report = {"data": data, "limit": args.limit, "seeds": sorted({row["seed"] for row in rows}), "rows": rows,
              "cpus": os.cpu_count()}
    path.write_text(json.dumps(report, indent=2))
    print(f"written {path}")
    return report


if __name__ == "__main__":
    main()
