"""What a run produced, in memory and as summary.json: written by the experiment, read back on resume."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from transferkit.files import atomic_write_text
from transferkit.rundir import RunDir


@dataclass
class VariantResult:
    """One trained variant: its per-epoch metrics, parameter groups, time, run directory and how it ended."""

    name: str
    history: list[dict]
    param_groups: list[dict]
    seconds: float
    run_dir: Path
    skipped_images: list[str] = field(default_factory=list)
    stop_reason: str | None = None
    best: str = ""
    timing: dict = field(default_factory=dict)
    best_epoch: int = 0
    metric: str = "accuracy"  # the task's headline metric (accuracy, map, mae, ...) and its better direction
    better: str = "max"
    test: dict = field(default_factory=dict)  # the selected weights' test metrics, from the one pass at the end
    weights: str = ""  # which weights those are ('best.pt (ema weights, epoch 3)')
    details: dict = field(default_factory=dict)  # what the model card needs (run/model_card.py)
    parent: dict | None = None  # train.init_from: the checkpoint this run started from, its run and epoch

    @property
    def final(self) -> dict:
        """The last epoch's metrics."""
        return self.history[-1] if self.history else {}

    @property
    def best_test(self) -> float:
        """The headline metric of the selected weights (best.pt) on the test split."""
        return self.test.get(f"test_{self.metric}", float("nan"))

    def summary(self) -> dict:
        """Plain-data summary written as summary.json."""
        return {"name": self.name, "epochs": len(self.history), "final": self.final, "metric": self.metric,
                "better": self.better, "test": self.test, "test_weights": self.weights,
                f"best_test_{self.metric}": self.best_test, "seconds": self.seconds,
                "param_groups": self.param_groups, "skipped_images": self.skipped_images,
                "stop_reason": self.stop_reason, "best_checkpoint": self.best, "best_epoch": self.best_epoch,
                "time": self.timing, "details": self.details, **({"parent": self.parent} if self.parent else {})}


@dataclass
class ExperimentResult:
    """All variants of one experiment, in run order, and where they were written."""

    name: str
    variants: dict[str, VariantResult]
    run_root: Path

    def __getitem__(self, name: str) -> VariantResult:
        return self.variants[name]


def write_summary(result: VariantResult) -> None:
    """summary.json in the variant's run directory: the mark of a finished variant."""
    atomic_write_text(RunDir(result.run_dir).summary, json.dumps(result.summary(), indent=2))


def read_summary(name: str, run_dir: Path) -> VariantResult:
    """A finished variant's result, read back from its run directory."""
    files = RunDir(run_dir)
    summary = json.loads(files.summary.read_text())
    history = json.loads(files.metrics_json.read_text())
    return VariantResult(name, history, summary["param_groups"], summary["seconds"], run_dir,
                         summary.get("skipped_images", []), summary.get("stop_reason"),
                         summary.get("best_checkpoint", ""), summary.get("time", {}),
                         summary.get("best_epoch", 0), summary.get("metric", "accuracy"),
                         summary.get("better", "max"), summary.get("test", {}), summary.get("test_weights", ""),
                         summary.get("details", {}), summary.get("parent"))
