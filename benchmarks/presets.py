"""Presets against the seed's recipe on real photos: wall time, peak resident memory and test accuracy.

Each side runs as its own `transferkit` process (so peak RSS is that run's alone, read with os.wait4):
the seed's way (examples/clothing/recipe.yaml, variant finetune: EfficientNet-Lite0 fine-tuned with
the head at 10x) and `transferkit fit --preset fast|balanced|best`, for each seed.

    python benchmarks/presets.py --data ../shared/data/clothing-small --seeds 0 1 2
    python benchmarks/presets.py --data ../shared/data/clothing-small --limit 600 --seeds 0   # quicker
    python benchmarks/presets.py --data ../shared/data/clothing-small --train-limit 496 --test-extra 127 \
        --sides best --seeds 0     # a ~500-image set: 496 train/ images (fit carves 50), 499 test images

Accuracy is the test accuracy of the weights best.pt holds: every side selects it on the validation
split (clothing-small's validation/ folder, which the seed's recipe finds by default too; with
--train-limit, a view of the folder without it, so fit carves one). Each row keeps how the run spent
its time (summary.json's `time`, with the evaluation's share of the wall time).
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

from folder_view import folder_view

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
    """Test accuracy of the weights best.pt holds (the run's one test pass at the end), the number of epochs
    trained, and how the run's one variant spent its time (summary.json's `time`)."""
    variant = next(p for p in run_root.iterdir() if (p / "summary.json").is_file())
    summary = json.loads((variant / "summary.json").read_text())
    history = json.loads((variant / "metrics.json").read_text())
    return summary["test"]["test_accuracy"], len(history), summary.get("time", {})


def main(argv: list[str] | None = None) -> dict:
    """Run every side for every seed; print a table and write benchmarks/results/presets_<date>.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with train/ and test/ (and validation/)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--limit", type=int, default=None, help="data.limit: at most this many images per split")
    parser.add_argument("--sides", nargs="+", default=["seed", "fast", "balanced", "best"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--keep-runs", type=Path, default=None, help="keep the run folders here (default: deleted)")
    parser.add_argument("--train-limit", type=int, default=None, help="a view of --data: this many train/ images, "
                        "no validation folder (fit carves one)")
    parser.add_argument("--test-extra", type=int, default=0, help="with --train-limit: validation-folder images "
                        "added to the view's test/")
    parser.add_argument("--set", action="append", default=[], help="an extra --set for every preset side (a "
                        "shorter run: --set train.epochs=2)")
    args = parser.parse_args(argv)
    data = str(Path(args.data).resolve())
    common = ["--no-progress", "--set", "train.device=cpu"] + (["--set", f"data.limit={args.limit}"] if args.limit else [])
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        if args.train_limit:
            data = str(folder_view(Path(data), Path(temporary) / f"view{args.train_limit}", args.test_extra,
                                   args.train_limit))
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
                               "--output", str(out), *common, *[f"--set={s}" for s in args.set]]
                wall, rss, code = run_side(command)
                accuracy, epochs, spent = (best_test_accuracy(next(out.iterdir())) if code == 0
                                           else (float("nan"), 0, {}))
                rows.append({"side": side, "seed": seed, "wall_seconds": round(wall, 1),
                             "peak_rss_gb": round(rss / 1e9, 2), "test_accuracy": accuracy, "epochs": epochs,
                             "exit_code": code, "time": spent, "load": os.getloadavg()})
                share = spent.get("evaluation_seconds", float("nan")) / wall
                print(f"{side:<9} seed {seed}: {wall:7.0f}s  {rss / 1e9:5.2f} GB peak RSS  "
                      f"test acc {accuracy:.3f}  ({epochs} epochs)  evaluating {share:.0%} of the wall time  "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = (f"_limit{args.limit}" if args.limit else "") + (f"_train{args.train_limit}" if args.train_limit else "")
    path = args.out / f"presets_{time.strftime('%Y-%m-%d')}{suffix}.json"
    if path.is_file():  # a day's runs of other sides or seeds kept; a side and seed measured again replaced
        measured = {(row["side"], row["seed"]) for row in rows}
        earlier = json.loads(path.read_text())["rows"]
        rows = [row for row in earlier if (row["side"], row["seed"]) not in measured] + rows
    report = {"data": str(Path(args.data).resolve()), "limit": args.limit, "train_limit": args.train_limit,
              "test_extra": args.test_extra, "set": args.set, "seeds": sorted({row["seed"] for row in rows}), "rows": rows,
              "cpus": os.cpu_count()}
    path.write_text(json.dumps(report, indent=2))
    print(f"written {path}")
    return report


if __name__ == "__main__":
    main()
