"""Tuning on real photos (issue #22's goals), every side in one invocation and each in its own process (peak RSS
from wait4, the machine's load average before and after):

  warm       `transferkit tune ... --trials 1` into a cache folder every study below shares, so each study's wall
             time is its trials' (the features are computed once, as they would be by a study's first trial)
  pruned     the study: `--trials N`, TPE and the median pruner, one process
  repeat     `transferkit run` on the pruned study's best-recipe.yaml: the best trial repeated
  unpruned   the same N points (enqueued in the pruned study's order), `tune.pruner: none`, one process
  two        the same N unpruned points, `--jobs 2` (two processes, one torch thread each on 2 cores)
  one1       the same N unpruned points, one process with one torch thread (OMP_NUM_THREADS=1): what of `two`'s
             gain is the second process, and what is one thread's instead of two on a loaded machine
  balanced   `transferkit fit DATA --preset balanced`: the validation accuracy the search should reach

The JSON is written again after each side, so a measurement cut short keeps what it measured.

    flock /tmp/transferkit-bench.lock python benchmarks/tune.py --data ../shared/data/clothing-small
        [--trials 20] [--limit 600] [--sides balanced warm pruned repeat unpruned two] [--set KEY=VALUE]...

`--limit N` sets `data.limit=N` on every side (at most N images per split) for a shorter measurement; `--set`
changes the recipe of every study (a smaller `tune.space`, the pruner's startup trials).

Writes benchmarks/results/tune_<date>.json (tune_<date>_2.json, ... for a later run the same day).
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
RECIPE = REPO / "examples" / "clothing" / "tune.yaml"


def run_side(name: str, command: list[str], log: Path, env: dict | None = None) -> dict:
    """Wall seconds, peak RSS, exit code and load of one process; its output goes to `log`."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    print(f"{name}: {wall:.0f}s, exit {code}, load {load:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
    if code:
        sys.stderr.write(log.read_text()[-3000:])
    return {"side": name, "wall_seconds": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2),
            "exit_code": code, "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
            "command": " ".join(command[2:])}


def journal_study(folder: Path, name: str):
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "study.journal")))
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)


def study_summary(folder: Path, name: str) -> dict:
    """States, values, epochs and seconds of each trial of a finished study."""
    trials = journal_study(folder, name).get_trials(deepcopy=False)
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "epochs": t.last_step, "seconds": round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
             if t.datetime_complete else None} for t in trials]
    states = [row["state"] for row in rows]
    complete = [row for row in rows if row["state"] == "COMPLETE"]
    best = max(complete, key=lambda row: row["value"]) if complete else None
    return {"trials": rows, "states": {s: states.count(s) for s in set(states)}, "best": best,
            "epochs_trained": sum(row["epochs"] or 0 for row in rows),
            "trial_seconds": round(sum(row["seconds"] or 0 for row in rows), 1)}


def best_epoch_row(run_dir: Path) -> dict:
    """The metrics of the epoch best.pt holds in a variant folder."""
    summary = json.loads((run_dir / "summary.json").read_text())
    history = json.loads((run_dir / "metrics.json").read_text())
    return history[(summary.get("best_epoch") or len(history)) - 1]


def main(argv: list[str] | None = None) -> dict:
    """Run every side; print the goal figures and write benchmarks/results/tune_<date>.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="clothing-small: train/, validation/ and test/")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--sides", nargs="+",
                        default=["balanced", "warm", "pruned", "repeat", "unpruned", "two", "one1"])
    parser.add_argument("--limit", type=int, default=None, help="data.limit on every side: images per split")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="--set for every study, e.g. tune.pruner_startup_trials=2")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=None, help="keep the studies here (default: a temp folder)")
    parser.add_argument("--cache", type=Path, default=None, help="the studies' shared cache folder (default: in "
                        "--work); one filled before makes the warm side quick")
    args = parser.parse_args(argv)
    data = str(Path(args.data).resolve())
    cli = [sys.executable, "-m", "transferkit.cli"]
    limit = ["--set", f"data.limit={args.limit}"] if args.limit else []
    tune = [*cli, "tune", str(RECIPE), "--set", f"data.root={data}", "--set", "train.device=cpu", *limit,
            *[part for text in args.overrides for part in ("--set", text)], "--no-progress"]
    sides, results = [], {"data": data, "trials": args.trials, "limit": args.limit, "set": args.overrides,
                          "recipe": str(RECIPE.relative_to(REPO)),
                          "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"tune_{results['date']}.json"
    for number in range(2, 100):  # another run the same day writes beside the first, never over it
        if not path.exists():
            break
        path = args.out / f"tune_{results['date']}_{number}.json"
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        cache = args.cache or work / "cache"
        # the comparisons first, the balanced preset last: a measurement cut short keeps its ratios
        if "warm" in args.sides:
            sides.append(run_side("warm", [*tune, "--trials", "1", "--study", "warm", "--output", str(work / "warm"),
                                           "--cache", str(cache)], work / "warm.log"))
        if "pruned" in args.sides:
            sides.append(run_side("pruned", [*tune, "--trials", str(args.trials), "--study", "pruned", "--output",
                                             str(work / "pruned"), "--cache", str(cache)], work / "pruned.log"))
            results["pruned"] = study_summary(work / "pruned", "pruned")
            save(path, results, sides)
        points = [row["params"] for row in results.get("pruned", {}).get("trials", [])]
        for side, jobs, env in (("unpruned", 1, None), ("two", 2, None), ("one1", 1, {"OMP_NUM_THREADS": "1"})):
            if side not in args.sides or not points:
                continue
            study = journal_study(work / side, side)
            for params in points:
                study.enqueue_trial(params)
            sides.append(run_side(side, [*tune, "--trials", str(args.trials), "--study", side, "--output",
                                         str(work / side), "--cache", str(cache), "--set", "tune.pruner=none",
                                         "--jobs", str(jobs)], work / f"{side}.log", env))
            results[side] = study_summary(work / side, side)
            save(path, results, sides)
        if "repeat" in args.sides and (work / "pruned" / "best-recipe.yaml").is_file():
            sides.append(run_side("repeat", [*cli, "run", str(work / "pruned" / "best-recipe.yaml"), "--output",
                                             str(work / "repeat"), "--no-progress"], work / "repeat.log"))
            history = json.loads(next((work / "repeat").glob("*/*/metrics.json")).read_text())
            results["repeat"] = {"val_accuracy": max(row["val_accuracy"] for row in history)}
            save(path, results, sides)
        if "balanced" in args.sides:
            sides.append(run_side("balanced", [*cli, "fit", data, "--preset", "balanced", "--device", "cpu",
                                               "--output", str(work / "balanced"), "--no-progress", *limit],
                                  work / "balanced.log"))
            row = best_epoch_row(next((work / "balanced").glob("*/*/summary.json")).parent)
            results["balanced"] = {"val_accuracy": row["val_accuracy"], "test_accuracy": row["test_accuracy"]}
    save(path, results, sides)
    print(json.dumps({k: v for k, v in results.items() if k not in ("pruned", "unpruned", "two", "one1", "sides")},
                     indent=1))
    print(f"written {path}")
    return results


def save(path: Path, results: dict, sides: list[dict]) -> None:
    """The results so far, with the goal figures of the sides that ran, written to `path`."""
    results["sides"] = sides
    wall = {side["side"]: side["wall_seconds"] for side in sides}
    if "pruned" in wall and "unpruned" in wall:
        results["pruning_saves"] = round(1 - wall["pruned"] / wall["unpruned"], 3)
    if "two" in wall and "unpruned" in wall:
        results["two_processes_over_one"] = round(wall["two"] / wall["unpruned"], 3)
    if "two" in wall and "one1" in wall:
        results["two_processes_over_one_single_thread"] = round(wall["two"] / wall["one1"], 3)
    if results.get("pruned", {}).get("best") and "balanced" in results:
        results["best_minus_balanced_val"] = round(results["pruned"]["best"]["value"]
                                                   - results["balanced"]["val_accuracy"], 4)
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
