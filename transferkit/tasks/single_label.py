"""single_label: each image is one of the classes (cross-entropy, accuracy); the default task."""

from __future__ import annotations

import numpy as np

from transferkit.registry import TASKS
from transferkit.tasks.base import Task
from transferkit.tasks.lazy_torch import nn, torch


@TASKS.register("single_label", origin="transferkit")
class SingleLabel(Task):
    """One class per image: softmax cross-entropy, accuracy; folders of classes or a class column."""

    name = "single_label"
    losses = ("cross_entropy",)
    metrics = {"loss": "min", "accuracy": "max"}
    default_metric = "accuracy"
    train_metric = "accuracy"
    output_kind = "classes"

    def __init__(self, recipe, outputs):
        super().__init__(recipe, outputs)
        self.label_smoothing = recipe.train.label_smoothing

    def criterion(self, class_weights=None) -> nn.Module:
        return nn.CrossEntropyLoss(weight=class_weights, reduction="none", label_smoothing=self.label_smoothing)

    def eval_losses(self, logits, targets):
        return nn.functional.cross_entropy(logits.float(), targets, reduction="none",
                                           label_smoothing=self.label_smoothing)

    def train_statistic(self, logits, targets):
        return (logits.argmax(1) == targets).sum()

    def epoch_metrics(self, logits, targets):
        if not len(targets):
            return {"loss": float("nan"), "accuracy": float("nan")}
        losses = self.eval_losses(logits, targets).double()
        return {"loss": losses.mean().item(), "accuracy": (logits.argmax(1) == targets).double().mean().item()}

    def answer(self, answers, k):
        order = np.argsort(-answers, kind="stable")[:k]
        top = [(self.outputs[i], float(answers[i])) for i in order]
        return {"label": top[0][0], "probability": top[0][1], "top_k": top}

    def prediction_columns(self, k):
        return ["label", "probability", *[c for i in range(1, k + 1) for c in (f"label_{i}", f"probability_{i}")]]

    def prediction_cells(self, p, k):
        ranked = [value for label, prob in p.top_k for value in (label, f"{prob:.6f}")]
        ranked += [""] * (2 * k - len(ranked))
        return [p.label or "", "" if p.probability is None else f"{p.probability:.6f}", *ranked]

    def answers(self, logits: np.ndarray) -> np.ndarray:
        shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)

    def logits_of(self, answers):
        return np.log(np.clip(answers, 1e-12, None))  # softmax(log p) = p where the p sum to 1


def default_task() -> SingleLabel:
    """Single-label classification with the recipe defaults (what a bare Trainer computes)."""
    from transferkit.recipe.spec import ExperimentSpec

    return SingleLabel(ExperimentSpec(), [])
