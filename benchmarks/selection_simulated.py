"""Checkpoint selection on simulated validation histories: which rule BestTracker should apply by default.

Each history is a curve of true accuracies per epoch (a plateau as a cosine schedule gives, a long linear-probe
run, one that overfits) measured on `n` validation images. Two noise models: each epoch's images drawn anew
(binomial, the pessimistic one), and images whose difficulty persists across epochs (an image right at one epoch
tends to stay right, as with real weights that change little between epochs). The project's own BestTracker
selects under each rule; the table gives the mean true accuracy of the epoch it keeps:

    python benchmarks/selection_simulated.py --repeats 1000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CURVES = {
    "plateau (10 epochs)": [0.80, 0.85, 0.88, 0.895, 0.905, 0.91, 0.913, 0.915, 0.916, 0.917],
    "probe (44 epochs)": [round(0.92 - 0.06 * float(np.exp(-e / 8)), 4) for e in range(44)],
    "overfits (10 epochs)": [0.80, 0.88, 0.91, 0.92, 0.915, 0.91, 0.90, 0.89, 0.885, 0.88],
}
RULES = {"best": ("best", 1.0), "last": ("last", 1.0), "within 1 SE": ("within", 1.0),
         "within 2 SE": ("within", 2.0), "within 3 SE": ("within", 3.0)}


def measured(curve: list[float], n: int, persistent: bool, rng) -> list[float]:
    """The validation accuracy of each epoch on `n` images."""
    if not persistent:
        return [rng.binomial(n, p) / n for p in curve]
    difficulty = rng.random(n)  # image i is right at an epoch when its difficulty is below the true accuracy
    return [float(np.mean(difficulty + rng.normal(0.0, 0.05, n) < p)) for p in curve]


def kept(history: list[float], rule: str, tolerance: float, n: int) -> int:
    """The epoch (1-based) BestTracker leaves in best.pt."""
    from transferkit.callbacks.best import BestTracker
    from transferkit.engine.trainer import EpochStats

    tracker = BestTracker("val_accuracy", rule=rule, tolerance=tolerance)
    trainer = SimpleNamespace(outputs={"val": {"": EpochStats(0.0, {}, n, 0.0)}})
    for epoch, value in enumerate(history, 1):
        tracker.on_epoch_end(trainer, epoch, {"val_accuracy": value})
    return tracker.best_epoch


def main(argv: list[str] | None = None) -> dict:
    """Simulate every (noise model, validation size, curve) and print the mean true accuracy per rule."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 341])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'noise':<10} {'val':>4} {'curve':<21} " + " ".join(f"{rule:>11}" for rule in RULES))
    for persistent in (False, True):
        for n in args.sizes:
            for name, curve in CURVES.items():
                rng = np.random.default_rng(0)
                means = {rule: 0.0 for rule in RULES}
                for _ in range(args.repeats):
                    history = measured(curve, n, persistent, rng)
                    for rule, (which, tolerance) in RULES.items():
                        means[rule] += curve[kept(history, which, tolerance, n) - 1] / args.repeats
                noise = "persistent" if persistent else "binomial"
                rows.append({"noise": noise, "val_images": n, "curve": name, "true_accuracy": curve,
                             "mean_true_accuracy_kept": {rule: round(v, 4) for rule, v in means.items()}})
                print(f"{noise:<10} {n:>4} {name:<21} " + " ".join(f"{means[rule]:>11.4f}" for rule in RULES))
    report = {"repeats": args.repeats, "rows": rows, "cpus": os.cpu_count(), "load": os.getloadavg()}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"selection_simulated_{time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written {path}")
    return report


if __name__ == "__main__":
    main()
