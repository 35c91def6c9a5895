"""The Task interface: the head's output size, the loss, the metrics and the default best metric, how outputs
are turned into answers, and the state (thresholds, target scale) that travels in checkpoints and exports."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from transferkit.errors import SpecError
from transferkit.registry import TASKS
from transferkit.tasks.lazy_torch import nn, torch


class Task:
    """One learning problem. A subclass registers itself in TASKS; the core asks it, never "is this classification".

    `outputs` are the head's output names: the classes (single_label), the labels (multi_label) or the target
    columns (regression). Targets come in the dataset's own form: a class index, a 0/1 vector, or raw values.
    """

    name: ClassVar[str] = ""
    losses: ClassVar[tuple[str, ...]] = ()            # the task.loss values it takes; the first is `auto`'s
    metrics: ClassVar[dict[str, str]] = {}           # epoch metric -> "max" or "min" (its better direction)
    default_metric: ClassVar[str] = "loss"           # the val_ metric `train.best_metric: auto` selects on
    train_metric: ClassVar[str] = ""                 # the per-example statistic shown as train_<name>
    discrete: ClassVar[bool] = True                  # targets are classes (stratified splits, class weights)
    labels_as: ClassVar[str] = "single_label"        # how a label table's cells are read: a class column
                                                     # (single_label), label sets (multi_label), numbers (regression)
    calibrates: ClassVar[bool] = False               # fit_to_validation fits a temperature under train.calibrate

    def __init__(self, recipe, outputs: list[str]):
        self.recipe, self.spec, self.outputs = recipe, recipe.task, list(outputs)

    @classmethod
    def contradictions(cls, spec) -> list[tuple[str, str]]:
        """(field, message with the fix) for recipe settings this task cannot honour."""
        found = []
        if spec.task.loss != "auto" and spec.task.loss not in cls.losses:
            found.append(("task.loss", f"{cls.name} takes {', '.join(cls.losses)} (or auto), not {spec.task.loss}"))
        for field_name, value in (("train.best_metric", spec.train.best_metric),
                                  ("train.early_stopping.metric",
                                   spec.train.early_stopping.metric if spec.train.early_stopping else "auto")):
            metric = value.partition("_")[2]
            if value != "auto" and metric not in cls.metrics:
                found.append((field_name, f"{cls.name} reports {', '.join(sorted(cls.metrics))}; use val_ or "
                                          f"test_ and one of them (e.g. val_{cls.default_metric})"))
        if spec.train.calibrate and not cls.calibrates:
            found.append(("train.calibrate", f"{cls.name} has no temperature to fit (temperature scaling is for "
                                             f"softmax probabilities, single_label); remove train.calibrate"))
        files = spec.data.source == "files"  # shards carry each sample's labels themselves
        if not cls.discrete and files and not spec.data.labels and spec.data.dataset == "folder":
            found.append(("data.labels", f"{cls.name} reads its labels from a table, not class folders; set "
                                         f"data.labels: labels.csv (docs/tasks.md)"))
        if not cls.discrete:
            what = f"{cls.name} targets are not one class per image"
            t, d = spec.train, spec.data
            for field_name, is_set, fix in (
                    ("train.class_weights", t.class_weights != "none", "remove train.class_weights"
                     + (" (task.pos_weight weighs each label's positives)" if cls.name == "multi_label" else "")),
                    ("data.sampler", d.sampler == "balanced", "set data.sampler: random"),
                    ("train.label_smoothing", bool(t.label_smoothing), "remove train.label_smoothing"),
                    ("data.augment", d.augment.mixes_batches, "set data.augment.mixup and cutmix to 0")):
                if is_set:
                    found.append((field_name, f"{what}; {fix}"))
        return found

    @property
    def loss_name(self) -> str:
        """task.loss resolved: `auto` is the task's first loss."""
        return self.losses[0] if self.spec.loss == "auto" else self.spec.loss

    def prepare(self, train_targets: list) -> None:
        """Learn what the task needs from the training targets (target scale, positive weights)."""

    def criterion(self, class_weights: torch.Tensor | None = None) -> nn.Module:
        """The training loss as a module: (logits, targets) -> per-example losses."""
        raise NotImplementedError

    def eval_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example losses as reported (no class weights)."""
        raise NotImplementedError

    def train_statistic(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The sum over a batch of the per-example train_metric (e.g. correct predictions)."""
        raise NotImplementedError

    def epoch_metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Every metric in `metrics` over a whole split (logits and targets of all its examples, on the CPU)."""
        raise NotImplementedError

    def answers(self, logits: np.ndarray) -> np.ndarray:
        """What a user reads from the head's outputs: class probabilities, label probabilities or values."""
        raise NotImplementedError

    output_kind: ClassVar[str] = "outputs"           # what the outputs are called in headers: classes, labels, targets

    def answer(self, answers: np.ndarray, k: int) -> dict[str, Any]:
        """One image's answer from its row of `answers`: the fields of a Prediction (label, probability, top_k,
        labels, values)."""
        raise NotImplementedError

    def prediction_columns(self, k: int) -> list[str]:
        """CSV columns of a prediction row between `path` and `error`."""
        raise NotImplementedError

    def prediction_cells(self, prediction, k: int) -> list[str]:
        """The cells of `prediction_columns` for one prediction (empty for an unreadable file)."""
        raise NotImplementedError

    def logits_of(self, answers: np.ndarray) -> np.ndarray:
        """Head outputs whose answers are `answers` (the inverse of `answers`): the fold models' averaged answers
        read as one model's."""
        raise NotImplementedError

    def explained_output(self, logits: np.ndarray) -> int:
        """The output Grad-CAM explains in an image when none is named: the highest-scoring one (class, label)."""
        return int(np.argmax(logits))

    def agreement(self, got: np.ndarray, expected: np.ndarray) -> float:
        """Largest difference between two models' answers to the same images (an export against its checkpoint)."""
        return float(np.abs(self.answers(got) - self.answers(expected)).max())

    def output_counts(self, targets: list) -> dict[str, int] | None:
        """Examples per output among `targets` (a split's), for the model card; None when outputs are not counts
        (regression values)."""
        return None

    def fit_to_validation(self, logits: torch.Tensor, targets: torch.Tensor) -> str | None:
        """After training: adjust what the task decides with (multi_label: its thresholds) to the best weights'
        validation outputs; returns a line saying what changed, or None when the task has nothing to adjust."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What predicting needs besides the weights (thresholds, target scale): saved in checkpoints and exports."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""

    def describe(self) -> str:
        """One header line: the task, its outputs and its loss."""
        return f"{self.name} ({len(self.outputs)} outputs, {self.loss_name} loss)"


def task_class(name: str) -> type[Task]:
    """The registered task class called `name`; SpecError naming task.name otherwise."""
    from transferkit.errors import NotRegisteredError

    try:
        return TASKS.get(name)
    except NotRegisteredError as exc:
        raise SpecError(f"task.name: {exc}") from None


def build_task(spec, outputs: list[str], state: dict | None = None) -> Task:
    """The recipe's task for these outputs (`spec` is the whole ExperimentSpec), with saved state restored."""
    task = task_class(spec.task.name)(spec, outputs)
    if state:
        task.load_state_dict(state)
    return task
