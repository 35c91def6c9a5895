"""Pruning at each epoch: a training-engine callback reports the trial's validation metric to Optuna after every
epoch and, when Optuna's pruner says so, ends the run there as early stopping would (its folder says why)."""

from __future__ import annotations

import math

from transferkit.engine.callbacks import Callback
from transferkit.recipe.spec import TuneSpec


def make_pruner(tune: TuneSpec):
    """The Optuna pruner `tune.pruner` names, with the recipe's settings."""
    from optuna import pruners

    if tune.pruner == "median":  # epochs count from 1: warm-up w lets the pruner judge from epoch w + 1
        return pruners.MedianPruner(n_startup_trials=tune.pruner_startup_trials,
                                    n_warmup_steps=tune.pruner_warmup_epochs + 1)
    if tune.pruner == "successive_halving":
        return pruners.SuccessiveHalvingPruner()
    if tune.pruner == "hyperband":
        return pruners.HyperbandPruner(min_resource=1)
    return pruners.NopPruner()


def epoch_value(row: dict, metric: str, better: str) -> float | None:
    """The epoch's value of `metric`: the better of the raw and the EMA weights' (as best.pt picks them)."""
    values = [row[key] for key in (metric, f"ema_{metric}") if isinstance(row.get(key), (int, float))]
    values = [value for value in values if math.isfinite(value)]
    if not values:
        return None
    return min(values) if better == "min" else max(values)


class PruneOnMetric(Callback):
    """Reports `metric` to the Optuna trial after each epoch; stops training when the trial should be pruned."""

    def __init__(self, trial, metric: str, better: str, pruner: str):
        self.trial, self.metric, self.better, self.pruner = trial, metric, better, pruner
        self.pruned_at: int | None = None
        self.value: float | None = None

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        value = epoch_value(row, self.metric, self.better)
        if value is None:
            value = math.inf if self.better == "min" else -math.inf  # a non-finite metric is the worst there is
        self.trial.report(value, epoch)
        if self.trial.should_prune() and epoch < trainer.epochs:
            self.pruned_at, self.value = epoch, value
            trainer.stop_reason = (f"pruned by Optuna's {self.pruner} pruner after epoch {epoch} of {trainer.epochs}: "
                                   f"{self.metric} {value:.4f} is behind the other trials at this epoch")
