"""regression: each image has one or more numbers (MSE, L1 or Huber on standardised targets; MAE, RMSE, R²)."""

from __future__ import annotations

import numpy as np

from transferkit.registry import TASKS
from transferkit.tasks.base import Task
from transferkit.tasks.lazy_torch import nn, torch


@TASKS.register("regression", origin="transferkit")
class Regression(Task):
    """One or more numbers per image, in the targets' own units: MSE/L1/Huber on standardised targets; MAE, RMSE, R²."""

    name = "regression"
    losses = ("mse", "l1", "huber")
    metrics = {"loss": "min", "mae": "min", "rmse": "min", "r2": "max"}
    default_metric = "mae"
    train_metric = "mae"
    output_kind = "targets"
    discrete = False
    labels_as = "regression"

    def __init__(self, recipe, outputs):
        super().__init__(recipe, outputs)
        self.mean, self.std = [0.0] * len(outputs), [1.0] * len(outputs)

    def prepare(self, train_targets: list) -> None:
        values = np.asarray(train_targets, dtype=np.float64).reshape(len(train_targets), -1)
        std = values.std(axis=0)
        self.mean, self.std = values.mean(axis=0).tolist(), np.where(std > 0, std, 1.0).tolist()

    def _loss(self) -> StandardisedLoss:
        from transferkit.tasks.losses import StandardisedLoss

        return StandardisedLoss(self.loss_name, self.mean, self.std, self.spec.huber_delta)

    def criterion(self, class_weights=None) -> nn.Module:
        return self._loss()

    def eval_losses(self, logits, targets):
        return self._loss().to(logits.device)(logits, targets)

    def values(self, outputs: torch.Tensor) -> torch.Tensor:
        """The head's standardised outputs in the targets' units."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=outputs.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=outputs.device)
        return outputs.float() * std + mean

    def train_statistic(self, logits, targets):
        return (self.values(logits) - targets.float()).abs().mean(dim=1).sum()

    def epoch_metrics(self, logits, targets):
        if not len(targets):
            return {name: float("nan") for name in self.metrics}
        from sklearn.metrics import r2_score

        predicted, truth = self.values(logits).double().numpy(), targets.double().numpy()
        errors = predicted - truth
        r2 = float(r2_score(truth, predicted)) if len(truth) > 1 else float("nan")
        return {"loss": self.eval_losses(logits, targets).double().mean().item(),
                "mae": float(np.abs(errors).mean()), "rmse": float(np.sqrt((errors ** 2).mean())), "r2": r2}

    def answers(self, logits: np.ndarray) -> np.ndarray:
        return logits.astype(np.float64) * np.asarray(self.std)[None, :] + np.asarray(self.mean)[None, :]

    def logits_of(self, answers):
        return (answers - np.asarray(self.mean)[None, :]) / np.asarray(self.std)[None, :]

    def explained_output(self, logits):
        """The first target: heat where the image raises its value."""
        return 0

    def answer(self, answers, k):
        return {"label": None, "probability": None, "top_k": [],
                "values": {name: float(v) for name, v in zip(self.outputs, answers)}}

    def prediction_columns(self, k):
        return list(self.outputs)

    def prediction_cells(self, p, k):
        return [f"{p.values[name]:.6g}" for name in self.outputs] if p.values else [""] * len(self.outputs)

    def agreement(self, got, expected):
        """In standardised units (the head's own outputs), so one tolerance fits targets of any scale."""
        return float(np.abs(got.astype(np.float64) - expected).max())

    def state_dict(self):
        return {"mean": list(self.mean), "std": list(self.std)}

    def load_state_dict(self, state):
        self.mean, self.std = list(state["mean"]), list(state["std"])

    def describe(self) -> str:
        return f"regression ({len(self.outputs)} targets: {', '.join(self.outputs)}; {self.loss_name} loss on standardised targets)"
