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
    calibrates = True

    def __init__(self, recipe, outputs):
        super().__init__(recipe, outputs)
        self.label_smoothing = recipe.train.label_smoothing
        self.temperature = 1.0  # probabilities are softmax(logits / temperature); fitted under train.calibrate
        self.calibration: dict | None = None  # what the fit measured on the validation split

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
        scaled = logits.astype(np.float64) / self.temperature
        exp = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def logits_of(self, answers):
        # softmax(T log p / T) = p where the p sum to 1, whatever this model's temperature T
        return self.temperature * np.log(np.clip(answers, 1e-12, None))

    def output_counts(self, targets):
        counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=len(self.outputs))
        return {name: int(n) for name, n in zip(self.outputs, counts)}

    def fit_to_validation(self, logits, targets):
        """Under train.calibrate: the temperature that minimises the validation split's NLL (temperature scaling)."""
        if not self.recipe.train.calibrate or not len(targets):
            return None
        from transferkit.tasks.calibration import calibration_report, fit_temperature

        scores, truth = logits.float().numpy(), targets.numpy()
        if (scores.argmax(axis=1) == truth).all():  # the NLL then falls all the way to T -> 0: nothing to fit
            return (f"no temperature fitted: all {len(truth)} validation images are classified correctly, so no "
                    f"temperature minimises their NLL (probabilities left as they are)")
        self.temperature = fit_temperature(scores, truth)
        report = calibration_report(scores, truth, self.temperature)
        self.calibration = {"split": "val", "images": report["images"],
                            **{f"{when}_{name}": report[when][name] for when in ("before", "after")
                               for name in ("nll", "ece")}}
        c = self.calibration
        return (f"temperature {self.temperature:.3f} fitted on the validation split ({len(truth)} images): NLL "
                f"{c['before_nll']:.3f} -> {c['after_nll']:.3f}, ECE {c['before_ece']:.3f} -> {c['after_ece']:.3f}")

    def state_dict(self):
        return {"temperature": self.temperature, "calibration": self.calibration}

    def load_state_dict(self, state):
        self.temperature = float(state.get("temperature", 1.0))
        self.calibration = state.get("calibration")


def default_task() -> SingleLabel:
    """Single-label classification with the recipe defaults (what a bare Trainer computes)."""
    from transferkit.recipe.spec import ExperimentSpec

    return SingleLabel(ExperimentSpec(), [])
