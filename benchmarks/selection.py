"""Checkpoint selection on a small validation split: which rule picks weights that hold up on the test split.

Each (preset, seed) trains once, with `transferkit fit` in a process of its own, the test split evaluated
after every epoch (`train.eval_test: every_epoch`) and a recorder callback keeping, for every epoch and every
candidate set of weights (the raw ones, and the EMA ones under `best`), the validation logits and the test
predictions. The selection rules are then compared offline on that history, so one training run serves every
rule:

    python benchmarks/selection.py --data ../shared/data/clothing-small --val-images 50 --seeds 0 1 2 3 4
    python benchmarks/selection.py --analyse benchmarks/results/selection_2026-12-05.json   # the rules only

The data folder's own validation folder is left out (a view of train/ and test/ with symbolic links is built in
a temporary folder), and `data.val_split` carves `--val-images` of the training images, stratified by class.
Results (every run's per-epoch history, the rules' table) are merged into
benchmarks/results/selection_<date>.json by (validation size, preset, seed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from folder_view import folder_view

REPO = Path(__file__).resolve().parents[1]


def share_for(view: Path, images: int) -> float:
    """The data.val_split share that carves about `images` validation images (rounded per class, as the carve
    rounds), searched on the view's class sizes."""
    sizes = [sum(1 for _ in d.iterdir()) for d in sorted((view / "train").iterdir())]

    def carved(share: float) -> int:
        return sum(min(n - 1, max(1, round(n * share))) for n in sizes)

    best = min((abs(carved(s / 10000) - images), s / 10000) for s in range(1, 5000))
    return best[1]


def worker(args) -> None:
    """One fit with the recorder: the per-epoch history as JSON in args.record."""
    from transferkit.engine.callbacks import Callback
    from transferkit.run.fit import start_fit

    class Recorder(Callback):
        """Keeps each epoch's validation logits and test predictions of every evaluated set of weights."""

        def __init__(self):
            self.epochs, self.targets = [], {}

        def on_epoch_end(self, trainer, epoch, row):
            entry = {"epoch": epoch, "row": {k: v for k, v in row.items() if isinstance(v, (int, float))}}
            for split, results in trainer.outputs.items():
                for prefix, stats in results.items():
                    self.targets[split] = stats.targets.tolist()
                    key = f"{prefix or 'raw_'}{split}"
                    if split == "val":
                        entry[key] = [[round(float(x), 4) for x in r] for r in stats.logits]
                    else:
                        entry[key] = stats.logits.argmax(1).tolist()
            self.epochs.append(entry)

    recorder = Recorder()
    overrides = [f"data.val_split={args.val_split}", "train.eval_test=every_epoch", "train.device=cpu",
                 *args.set]
    fit = start_fit(args.folder, args.preset, seed=args.seed, device="cpu", overrides=overrides, output=args.runs)
    started = time.perf_counter()
    result = fit.experiment.run(progress=False, run_root=fit.root.path, callbacks=[recorder])
    variant = next(iter(result.variants.values()))
    Path(args.record).write_text(json.dumps({
        "preset": args.preset, "seed": args.seed, "val_split": args.val_split, "targets": recorder.targets,
        "epochs": recorder.epochs, "wall_seconds": time.perf_counter() - started, "time": variant.timing,
        "best_epoch": variant.best_epoch, "best_checkpoint": variant.best}))


def accuracy(logits: list, targets: list) -> float:
    """Share of rows whose largest logit is the target."""
    return float((np.asarray(logits).argmax(1) == np.asarray(targets)).mean())


def nll(logits: list, targets: list) -> float:
    """Mean cross-entropy (no label smoothing) of the logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(targets)), targets].mean())


def candidates(run: dict) -> list[dict]:
    """Every (epoch, weights) of a run with its validation accuracy, NLL and the task's loss, and test accuracy."""
    val_t, test_t = run["targets"]["val"], run["targets"]["test"]
    found = []
    for entry in run["epochs"]:
        for weights, prefix in (("raw", "raw_"), ("ema", "ema_")):
            if f"{prefix}val" not in entry:
                continue
            found.append({"epoch": entry["epoch"], "weights": weights,
                          "val_accuracy": accuracy(entry[f"{prefix}val"], val_t),
                          "val_nll": nll(entry[f"{prefix}val"], val_t),
                          "val_loss": entry["row"][f"{'ema_' if weights == 'ema' else ''}val_loss"],
                          "test_accuracy": float((np.asarray(entry[f"{prefix}test"]) == np.asarray(test_t)).mean())})
    return found


def standard_error(p: float, n: int, wald: bool = False) -> float:
    """Standard error of an accuracy p measured on n images: BestTracker's (Agresti-Coull's), or the plain
    sqrt(p (1 - p) / n) (zero at a perfect score) with `wald`."""
    if wald:
        return math.sqrt(max(p * (1 - p), 0.0) / n)
    from transferkit.callbacks.best import standard_error as trackers

    return trackers(p, n)


def smoothed(values: list[float], width: int = 3) -> list[float]:
    """Trailing mean over up to `width` epochs."""
    return [float(np.mean(values[max(0, i - width + 1):i + 1])) for i in range(len(values))]


def pick(run: dict, rule: str) -> dict:
    """The candidate a rule selects."""
    found = candidates(run)
    n_val = len(run["targets"]["val"])
    last_epoch = max(c["epoch"] for c in found)
    raw = [c for c in found if c["weights"] == "raw"]
    ema = [c for c in found if c["weights"] == "ema"]
    if rule == "last":
        return raw[-1]
    if rule == "last_ema":
        return (ema or raw)[-1]
    if rule == "last_by_val":  # the last epoch, raw or EMA weights by validation accuracy (ties: EMA)
        at_last = [c for c in found if c["epoch"] == last_epoch]
        return max(reversed(at_last), key=lambda c: c["val_accuracy"])
    if rule == "val_accuracy":  # the current rule: the first strictly best epoch; raw before EMA on a tie
        return max(found, key=lambda c: (c["val_accuracy"], -c["epoch"], c["weights"] == "raw"))
    if rule == "val_accuracy_latest":
        return max(found, key=lambda c: (c["val_accuracy"], c["epoch"], c["weights"] == "ema"))
    if rule == "val_nll":
        return min(found, key=lambda c: c["val_nll"])
    if rule == "val_loss":  # the task's loss (label smoothing included), as best_metric: val_loss selects
        return min(found, key=lambda c: c["val_loss"])
    if rule == "smoothed_val_accuracy":  # a trailing 3-epoch mean per weights, then the latest best
        best = None
        for group in (raw, ema):
            if not group:
                continue
            values = smoothed([c["val_accuracy"] for c in group])
            for c, v in zip(group, values):
                if best is None or v >= best[0]:
                    best = (v, c)
        return best[1]
    if rule.startswith("within_"):  # the latest epoch with a candidate within k standard errors of the best
        k = float(rule.split("_")[1].removesuffix("se"))
        top = max(c["val_accuracy"] for c in found)
        margin = k * standard_error(top, n_val, wald=rule.endswith("_wald"))
        ok = [c for c in found if c["val_accuracy"] >= top - margin - 1e-12]
        latest = max(c["epoch"] for c in ok)
        # at that epoch: EMA when it is within the margin ("_ema"); the raw weights unless the EMA ones lead by more
        # than the margin ("_raw", as BestTracker does); else the better score (a tie: EMA)
        at = [c for c in ok if c["epoch"] == latest]
        rule = rule.removesuffix("_wald")
        if rule.endswith("_ema"):
            return max(at, key=lambda c: c["weights"] == "ema")
        leader = max(at, key=lambda c: (c["val_accuracy"], c["weights"] == "ema"))
        raw_at = [c for c in at if c["weights"] == "raw"]
        if rule.endswith("_raw") and raw_at and leader["val_accuracy"] - raw_at[0]["val_accuracy"] <= margin + 1e-12:
            return raw_at[0]  # the EMA weights only when they lead by more than the margin (BestTracker's `within`)
        return leader
    raise ValueError(rule)


RULES = ("val_accuracy", "val_accuracy_latest", "val_nll", "val_loss", "smoothed_val_accuracy", "within_0.5se",
         "within_1se", "within_1se_wald", "within_1se_ema", "within_1se_raw", "within_2se", "within_3se", "last",
         "last_ema", "last_by_val")


def analyse(runs: list[dict]) -> list[dict]:
    """Per validation size, preset and rule: the mean test accuracy of the selected weights, and its mean
    difference from the last epoch's raw weights (with the seeds it won, tied, lost)."""
    table = []
    keys = sorted({(r["val_images"], r["preset"]) for r in runs}, key=lambda k: (k[0], ["fast", "balanced", "best"]
                                                                                   .index(k[1])))
    for val_images, preset in keys:
        group = sorted((r for r in runs if (r["val_images"], r["preset"]) == (val_images, preset)),
                       key=lambda r: r["seed"])
        last = [pick(r, "last")["test_accuracy"] for r in group]
        for rule in RULES:
            chosen = [pick(r, rule) for r in group]
            diffs = [c["test_accuracy"] - base for c, base in zip(chosen, last)]
            table.append({"val_images": val_images, "preset": preset, "rule": rule, "seeds": [r["seed"] for r in group],
                          "test_accuracy": [round(c["test_accuracy"], 4) for c in chosen],
                          "selected": [f"{c['epoch']}{'e' if c['weights'] == 'ema' else ''}" for c in chosen],
                          "mean_test_accuracy": round(float(np.mean([c["test_accuracy"] for c in chosen])), 4),
                          "mean_minus_last": round(float(np.mean(diffs)), 4),
                          "won_tied_lost": [sum(d > 1e-9 for d in diffs), sum(abs(d) <= 1e-9 for d in diffs),
                                            sum(d < -1e-9 for d in diffs)]})
    return table


def print_table(table: list[dict]) -> None:
    """The rules' table, one row per (validation size, preset, rule)."""
    print(f"{'val':>4} {'preset':<9} {'rule':<22} {'mean test':>9} {'- last':>7}  won/tied/lost  selected")
    for row in table:
        print(f"{row['val_images']:>4} {row['preset']:<9} {row['rule']:<22} {row['mean_test_accuracy']:>9.4f} "
              f"{row['mean_minus_last']:>+7.4f}  {'/'.join(map(str, row['won_tied_lost'])):<13}  "
              f"{' '.join(row['selected'])}")


def main(argv: list[str] | None = None) -> dict:
    """Train every (preset, seed) with the recorder, or re-analyse a results file; print the rules' table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder with train/ and test/ (its validation folder is left out)")
    parser.add_argument("--val-images", type=int, default=50, help="validation images carved from train/")
    parser.add_argument("--train-limit", type=int, default=None, help="a seeded subset of train/ (a smaller set)")
    parser.add_argument("--test-extra", type=int, default=0, help="validation-folder images added to test/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--presets", nargs="+", default=["fast", "balanced", "best"])
    parser.add_argument("--set", action="append", default=[], help="extra --set for every run")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--analyse", type=Path, default=None, help="a results file: print its rules' table only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--val-split", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    parser.add_argument("--runs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if args.analyse:
        report = json.loads(args.analyse.read_text())
        report["rules"] = analyse(report["runs"])
        print_table(report["rules"])
        return report
    runs = []
    label = f"selection{'_train' + str(args.train_limit) if args.train_limit else ''}"
    path = args.out / f"{label}_{time.strftime('%Y-%m-%d')}.json"
    with tempfile.TemporaryDirectory() as temporary:
        view = folder_view(args.data.resolve(), Path(temporary) / "view", args.test_extra, args.train_limit)
        share = share_for(view, args.val_images)
        for seed in args.seeds:
            for preset in args.presets:
                record = Path(temporary) / f"{preset}-{seed}.json"
                command = [sys.executable, __file__, "--worker", "--folder", str(view), "--preset", preset,
                           "--seed", str(seed), "--val-split", str(share), "--record", str(record),
                           "--runs", str(Path(temporary) / "runs"), *[f"--set={s}" for s in args.set]]
                started = time.perf_counter()
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                _, status, usage = os.wait4(process.pid, 0)
                if status:
                    sys.stderr.write(process.stderr.read()[-3000:])
                    continue
                run = json.loads(record.read_text())
                run.update(val_images=len(run["targets"]["val"]), process_seconds=time.perf_counter() - started,
                           peak_rss_gb=round(usage.ru_maxrss * 1024 / 1e9, 2), load=os.getloadavg())
                runs.append(run)
                picked = {rule: pick(run, rule) for rule in ("val_accuracy", "last")}
                print(f"{preset:<9} seed {seed}: {len(run['epochs'])} epochs, {run['process_seconds']:.0f}s; "
                      f"val_accuracy picks {picked['val_accuracy']['epoch']} "
                      f"(test {picked['val_accuracy']['test_accuracy']:.3f}), last epoch test "
                      f"{picked['last']['test_accuracy']:.3f}", flush=True)
                args.out.mkdir(parents=True, exist_ok=True)
                merged = runs
                if path.is_file():  # a day's other runs kept; a (size, preset, seed) measured again replaced
                    measured = {(r["val_images"], r["preset"], r["seed"]) for r in runs}
                    merged = [r for r in json.loads(path.read_text())["runs"]
                              if (r["val_images"], r["preset"], r["seed"]) not in measured] + runs
                report = {"data": str(args.data.resolve()), "train_limit": args.train_limit,
                          "test_extra": args.test_extra, "cpus": os.cpu_count(), "runs": merged,
                          "rules": analyse(merged)}
                path.write_text(json.dumps(report))
    report = json.loads(path.read_text())
    print_table(report["rules"])
    print(f"written {path}")
    return report


if __name__ == "__main__":
    main()
