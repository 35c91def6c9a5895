"""multi_label: each image holds any set of the labels (sigmoid + BCE; mAP, F1 at per-label thresholds)."""

from __future__ import annotations

import numpy as np

from transferkit.errors import SpecError
from transferkit.registry import TASKS
from transferkit.tasks.base import Task
from transferkit.tasks.lazy_torch import nn, torch


def average_precisions(scores: np.ndarray, targets: np.ndarray) -> list[float | None]:
    """Each label's average precision (scikit-learn's), None for a label with no positive example."""
    from sklearn.metrics import average_precision_score

    return [float(average_precision_score(targets[:, i], scores[:, i])) if targets[:, i].any() else None
            for i in range(targets.shape[1])]


def f1_scores(predicted: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each label's F1 of 0/1 predictions (0 where it has neither positives nor predictions)."""
    tp = (predicted & targets).sum(0)
    denominator = predicted.sum(0) + targets.sum(0)
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def tune_thresholds(probabilities: np.ndarray, targets: np.ndarray, default: float = 0.5) -> list[float]:
    """Per label, the probability threshold with the best F1 on these examples (precision-recall curve);
    `default` for a label without positives."""
    from sklearn.metrics import precision_recall_curve

    chosen = []
    for i in range(targets.shape[1]):
        if not targets[:, i].any():
            chosen.append(default)
            continue
        precision, recall, thresholds = precision_recall_curve(targets[:, i], probabilities[:, i])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        chosen.append(float(thresholds[int(np.argmax(f1))]))
    return chosen


@TASKS.register("multi_label", origin="transferkit")
class MultiLabel(Task):
    """Any set of labels per image: sigmoid + BCE (optional pos_weight); mAP, F1 at thresholds, subset accuracy."""

    name = "multi_label"
    losses = ("bce",)
    metrics = {"loss": "min", "map": "max", "f1": "max", "subset_accuracy": "max"}
    default_metric = "map"
    train_metric = "subset_accuracy"
    output_kind = "labels"
    discrete = False
    labels_as = "multi_label"

    def __init__(self, recipe, outputs):
        super().__init__(recipe, outputs)
        given = self.spec.thresholds
        if isinstance(given, list) and len(given) != len(outputs):
            raise SpecError(f"task.thresholds: {len(given)} thresholds for {len(outputs)} labels; give one per label "
                            f"({', '.join(outputs)}) or a single number")
        self.thresholds = given if isinstance(given, list) else [given if given is not None else 0.5] * len(outputs)
        self.tuned = False  # thresholds chosen on the validation split, not given or the 0.5 default
        self.pos_weight: list[float] | None = None

    @classmethod
    def contradictions(cls, spec) -> list[tuple[str, str]]:
        found = super().contradictions(spec)
        thresholds = spec.task.thresholds
        values = thresholds if isinstance(thresholds, list) else [thresholds] if thresholds is not None else []
        if any(not 0.0 < t < 1.0 for t in values):
            found.append(("task.thresholds", "thresholds are probabilities: use numbers between 0 and 1"))
        return found

    def prepare(self, train_targets: list) -> None:
        weight = self.spec.pos_weight
        if weight == "auto":
            positives = np.asarray(train_targets, dtype=np.float64).sum(0)
            negatives = len(train_targets) - positives
            self.pos_weight = (negatives / np.maximum(positives, 1)).tolist()
        elif isinstance(weight, list):
            if len(weight) != len(self.outputs):
                raise SpecError(f"task.pos_weight: {len(weight)} weights for {len(self.outputs)} labels; give one "
                                f"per label ({', '.join(self.outputs)})")
            self.pos_weight = list(weight)

    def criterion(self, class_weights=None) -> nn.Module:
        weight = torch.tensor(self.pos_weight, dtype=torch.float32) if self.pos_weight else None
        from transferkit.tasks.losses import BCEPerExample

        return BCEPerExample(weight)

    def eval_losses(self, logits, targets):
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(),
                                                              reduction="none").mean(dim=1)

    def _predicted(self, logits: torch.Tensor) -> torch.Tensor:
        thresholds = torch.tensor(self.thresholds, dtype=torch.float32, device=logits.device)
        return torch.sigmoid(logits.float()) >= thresholds

    def train_statistic(self, logits, targets):
        return (self._predicted(logits) == (targets > 0.5)).all(dim=1).sum()

    def epoch_metrics(self, logits, targets):
        if not len(targets):
            return {name: float("nan") for name in self.metrics}
        truth = (targets > 0.5).numpy()
        predicted = self._predicted(logits).numpy()
        precisions = [ap for ap in average_precisions(torch.sigmoid(logits.float()).numpy(), truth) if ap is not None]
        return {"loss": self.eval_losses(logits, targets).double().mean().item(),
                "map": float(np.mean(precisions)) if precisions else float("nan"),
                "f1": float(f1_scores(predicted, truth).mean()),
                "subset_accuracy": float((predicted == truth).all(axis=1).mean())}

    def answers(self, logits: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))

    def logits_of(self, answers):
        p = np.clip(answers, 1e-12, 1 - 1e-12)
        return np.log(p / (1 - p))

    def answer(self, answers, k):
        labels = [name for name, p, t in zip(self.outputs, answers, self.thresholds) if p >= t]
        order = np.argsort(-answers, kind="stable")[:k]
        return {"label": self.delimiter.join(labels), "probability": None, "labels": labels,
                "top_k": [(self.outputs[i], float(answers[i])) for i in order],
                "scores": {name: float(p) for name, p in zip(self.outputs, answers)}}

    @property
    def delimiter(self) -> str:
        """How a label set is written in one cell (the label table's delimiter)."""
        table = self.recipe.data.labels
        return table.delimiter if table else "|"

    def prediction_columns(self, k):
        return ["labels", *[f"p_{name}" for name in self.outputs]]

    def prediction_cells(self, p, k):
        if not p.scores:
            return [""] * (1 + len(self.outputs))
        return [p.label, *[f"{p.scores[name]:.6f}" for name in self.outputs]]

    def output_counts(self, targets):
        positives = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1).sum(0) if len(targets) else \
            np.zeros(len(self.outputs))
        return {name: int(n) for name, n in zip(self.outputs, positives)}

    def fit_to_validation(self, logits, targets):
        """Each label's threshold chosen for F1 on the validation outputs, unless task.thresholds fixed them."""
        if self.spec.thresholds is not None:
            return None
        self.thresholds = tune_thresholds(self.answers(logits.numpy()), targets.numpy() > 0.5)
        self.tuned = True
        chosen = ", ".join(f"{name} {t:.3f}" for name, t in zip(self.outputs, self.thresholds))
        return f"thresholds tuned for F1 on the validation split: {chosen}"

    def state_dict(self):
        return {"thresholds": list(self.thresholds), "tuned": self.tuned}

    def load_state_dict(self, state):
        if self.spec.thresholds is None and "thresholds" in state:  # a recipe's own thresholds win
            self.thresholds, self.tuned = list(state["thresholds"]), bool(state.get("tuned"))

    def describe(self) -> str:
        weight = ", positives weighted" if self.pos_weight else ""
        return f"multi_label ({len(self.outputs)} labels, bce loss{weight})"
