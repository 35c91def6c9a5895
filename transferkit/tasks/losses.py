"""The tasks' own loss modules (torch): imported when a task builds its criterion, so registering and checking
tasks needs no torch."""

from __future__ import annotations

import torch
from torch import nn


class BCEPerExample(nn.Module):
    """Binary cross-entropy with logits, averaged over the labels of each example."""

    def __init__(self, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits, targets):
        losses = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none",
                                                                pos_weight=self.pos_weight)
        return losses.mean(dim=1)


class StandardisedLoss(nn.Module):
    """A regression loss on targets standardised with the training mean and std, averaged over the outputs."""

    def __init__(self, kind: str, mean: list[float], std: list[float], delta: float = 1.0):
        super().__init__()
        self.kind, self.delta = kind, delta
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, outputs, targets):
        standardised = (targets.float() - self.mean) / self.std
        outputs = outputs.float()
        if self.kind == "l1":
            losses = nn.functional.l1_loss(outputs, standardised, reduction="none")
        elif self.kind == "huber":
            losses = nn.functional.huber_loss(outputs, standardised, reduction="none", delta=self.delta)
        else:
            losses = nn.functional.mse_loss(outputs, standardised, reduction="none")
        return losses.mean(dim=1)
