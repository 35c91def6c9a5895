"""The one notion of "best" that best.pt and early stopping share (fastai's TrackerCallback idea)."""

from __future__ import annotations

import math

from transferkit.engine.callbacks import Callback, RunContext


def standard_error(accuracy: float, images: int) -> float:
    """The standard error of an accuracy (a share of `images` independent right-or-wrong answers)."""
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / images) if images else float("nan")


class BestTracker(Callback):
    """After each epoch: did `metric` improve by more than `min_delta`, and did the raw or the EMA weights score it?

    With `metric` None there is no selection: every epoch counts as the best so far (best.pt = last epoch).
    """

    def __init__(self, metric: str | None, min_delta: float = 0.0, mode: str | None = None):
        self.metric, self.min_delta = metric, min_delta
        self.mode = mode or ("min" if metric and metric.endswith("loss") else "max")  # the task says (mae: min)
        self.best, self.best_epoch, self.source, self.improved = None, 0, "raw", False

    @classmethod
    def from_run(cls, run: RunContext) -> "BestTracker":
        """Always on: best.pt and early stopping read its verdict."""
        stop, task = run.spec.train.early_stopping, run.task
        mode = task.metrics.get(run.selection.partition("_")[2]) if run.selection and task else None  # mae: min
        return cls(run.selection, stop.min_delta if stop else 0.0, mode)

    def _better(self, value: float, than: float | None) -> bool:
        if than is None:
            return math.isfinite(value)
        return value < than - self.min_delta if self.mode == "min" else value > than + self.min_delta

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        if self.metric is None:
            self.improved, self.best_epoch = True, epoch
            return
        candidates = {"raw": row[self.metric]}
        if f"ema_{self.metric}" in row:
            candidates["ema"] = row[f"ema_{self.metric}"]
        pick = min if self.mode == "min" else max
        source = pick(candidates, key=candidates.get)
        self.improved = self._better(candidates[source], self.best)
        if self.improved:
            self.best, self.best_epoch, self.source = candidates[source], epoch, source

    def describe(self) -> str:
        """'val_accuracy 0.912 at epoch 3 (EMA weights)', or what best.pt holds without selection."""
        if self.metric is None:
            return "last epoch (no selection metric)"
        weights = " (EMA weights)" if self.source == "ema" else ""
        best = "none" if self.best is None else f"{self.best:.4f}"
        return f"{self.metric} {best} at epoch {self.best_epoch}{weights}"

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "source": self.source, "improved": self.improved}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.source, self.improved = state["source"], state["improved"]
