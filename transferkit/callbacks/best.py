"""The one notion of "best" that best.pt and early stopping share (fastai's TrackerCallback idea)."""

from __future__ import annotations

import math

from transferkit.engine.callbacks import Callback, RunContext


def standard_error(accuracy: float, images: int) -> float:
    """The standard error of an accuracy measured on `images` right-or-wrong answers: Agresti-Coull's, the plain
    sqrt(p (1 - p) / n) with two right and two wrong answers added, which stays above zero at a perfect score
    (50 of 50 is not a certainty)."""
    if not images:
        return float("nan")
    adjusted = (accuracy * images + 2) / (images + 4)
    return math.sqrt(adjusted * (1.0 - adjusted) / (images + 4))


RULES = {
    "best": "the epoch with the best score",
    "within": "the latest epoch whose score is within {k:g} standard error(s) of the best",
    "last": "the last epoch",
}


def resolved_rule(selection: str) -> str:
    """train.selection resolved: `auto` is `within`."""
    return "within" if selection == "auto" else selection


def rule_words(rule: str, tolerance: float, metric: str | None) -> str:
    """A selection rule in words, for the run header and the model card."""
    if rule == "within" and not (metric or "").endswith("accuracy"):
        return RULES["best"] + f" ({metric} has no standard error to allow for)"
    return RULES[rule].format(k=tolerance)


class BestTracker(Callback):
    """After each epoch: did `metric` improve (by more than `min_delta`: early stopping's question), and does best.pt
    take this epoch (the selection `rule`'s), with the raw or the EMA weights: whichever scores better (EMA on a
    tie), except under `within`, where the EMA weights must lead by more than its margin?

    Rules: `best`, the best score (the first of equals); `last`, the last epoch; `within`, the latest epoch whose
    score is within `tolerance` standard errors (standard_error, at the best score so far) of that best score, so
    a small validation split, whose differences between epochs are mostly noise, leans to the later epochs, and
    a large one picks the best (docs/training.md has the measurements). A metric without a standard error (a
    loss, mAP, R²) takes the best under `within`.
    With `metric` None there is no selection: every epoch is taken (best.pt = last epoch).
    """

    def __init__(self, metric: str | None, min_delta: float = 0.0, mode: str | None = None, rule: str = "best",
                 tolerance: float = 1.0):
        self.metric, self.min_delta, self.rule, self.tolerance = metric, min_delta, rule, tolerance
        self.mode = mode or ("min" if metric and metric.endswith("loss") else "max")  # the task says (mae: min)
        self.top: float | None = None  # the best score so far
        self.best, self.best_epoch, self.source, self.improved, self.selected = None, 0, "raw", False, False
        self.images = 0  # examples the metric was measured on (its standard error's n)

    @classmethod
    def from_run(cls, run: RunContext) -> "BestTracker":
        """Always on: best.pt and early stopping read its verdict."""
        t, task = run.spec.train, run.task
        stop = t.early_stopping
        mode = task.metrics.get(run.selection.partition("_")[2]) if run.selection and task else None  # mae: min
        return cls(run.selection, stop.min_delta if stop else 0.0, mode, resolved_rule(t.selection),
                   t.selection_tolerance)

    @property
    def has_standard_error(self) -> bool:
        """True for an accuracy: a share of right answers, whose standard error follows from the count alone."""
        return bool(self.metric) and self.metric.endswith("accuracy")

    def margin(self) -> float:
        """How far from the best score an epoch may be and still be taken under `within` (0 for other rules)."""
        if self.rule != "within" or self.top is None or not self.has_standard_error or not self.images:
            return 0.0
        return self.tolerance * standard_error(self.top, self.images)

    def _better(self, value: float, than: float | None) -> bool:
        if than is None:
            return math.isfinite(value)
        return value < than - self.min_delta if self.mode == "min" else value > than + self.min_delta

    def _close_enough(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        margin = self.margin() + 1e-12
        return value <= self.top + margin if self.mode == "min" else value >= self.top - margin

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        if self.metric is None:
            self.improved = self.selected = True
            self.best_epoch = epoch
            return
        split = self.metric.partition("_")[0]
        measured = getattr(trainer, "outputs", {}).get(split, {}).get("")
        if measured is not None:
            self.images = measured.examples
        candidates = {"raw": row[self.metric]}
        if f"ema_{self.metric}" in row:
            candidates["ema"] = row[f"ema_{self.metric}"]
        sign = -1 if self.mode == "min" else 1
        leader = max(reversed(list(candidates)), key=lambda name: sign * candidates[name])  # a tie: EMA
        self.improved = self._better(candidates[leader], self.top)
        if self.improved:
            self.top = candidates[leader]
        source = self._weights(candidates, leader)
        value = candidates[source]
        if self.rule == "last":
            self.selected = math.isfinite(value)
        elif self.rule == "within" and self.top is not None:
            self.selected = self._close_enough(value)
        else:
            self.selected = self.improved
        if self.selected:
            self.best, self.best_epoch, self.source = value, epoch, source

    def _weights(self, candidates: dict, leader: str) -> str:
        """Which weights this epoch would give best.pt: under `within`, the raw ones unless the EMA ones lead them by
        more than the margin (a lead within the noise, or a tie, does not switch; docs/training.md has the
        measurements), or only the EMA ones are close enough to the best; under the other rules, the leader (a tie:
        EMA)."""
        if self.rule != "within" or "ema" not in candidates or leader == "raw" or not self._close_enough(
                candidates["raw"]):
            return leader
        lead = abs(candidates["ema"] - candidates["raw"])
        return "ema" if lead > self.margin() + 1e-12 else "raw"

    def describe(self) -> str:
        """'val_accuracy 0.912 at epoch 3 (EMA weights)', or what best.pt holds without selection."""
        if self.metric is None:
            return "last epoch (no selection metric)"
        weights = " (EMA weights)" if self.source == "ema" else ""
        best = "none" if self.best is None else f"{self.best:.4f}"
        held = f"{self.metric} {best} at epoch {self.best_epoch}{weights}"
        if self.rule == "within" and self.top is not None and self.best is not None and self.best != self.top:
            held += (f"; the best was {self.top:.4f}, and {self.metric} on {self.images} images has a standard error "
                     f"of {standard_error(self.top, self.images):.4f}")
        return held

    def rule_words(self) -> str:
        """The selection rule in words ('the latest epoch whose score is within 1 standard error(s) of the best')."""
        return rule_words(self.rule, self.tolerance, self.metric)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "source": self.source, "improved": self.improved,
                "top": self.top, "selected": self.selected, "images": self.images}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.source, self.improved = state["source"], state["improved"]
        self.top = state.get("top", self.best)
        self.selected, self.images = state.get("selected", self.improved), state.get("images", 0)
