"""single_label: each image is one of the classes (cross-entropy, accuracy); the default task."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from transferkit.registry import TASKS
from transferkit.tasks.base import Task


@TASKS.register("single_label", origin="transferkit")
class SingleLabel(Task):
    """One class per image: softmax cross-entropy, accuracy; folders of classes or a class column."""

    name = "single_label"
    losses = ("cross_entropy",)
    metrics = {"loss": "min", "accuracy": "max"}
    default_metric = "accuracy"
    train_metric = "accuracy"

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

    def answers(self, logits: np.ndarray) -> np.ndarray:
        shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)


def default_task() -> SingleLabel:
    """Single-label classification with the recipe defaults (what a bare Trainer computes)."""
    from transferkit.recipe.spec import ExperimentSpec

    return SingleLabel(ExperimentSpec(), [])
