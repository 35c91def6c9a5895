"""Class imbalance: per-sample weights for a balanced sampler, per-class weights for the loss."""

from __future__ import annotations

import torch

from transferkit.errors import SpecError


def class_counts(labels: list[int], num_classes: int) -> torch.Tensor:
    """Images per class (num_classes,)."""
    return torch.bincount(torch.tensor(labels, dtype=torch.int64), minlength=num_classes)


def balanced_weights(labels: list[int]) -> torch.Tensor:
    """Per-sample weights 1 / (count of its class): every class is drawn equally often."""
    index = torch.tensor(labels, dtype=torch.int64)
    return 1.0 / torch.bincount(index)[index].double()


def loss_weights(setting: str | list[float], power: float, labels: list[int], classes: list[str]) -> torch.Tensor | None:
    """train.class_weights resolved: None, auto ((1 / frequency) ^ power, scaled to mean 1), or the given list."""
    if setting == "none":
        return None
    if isinstance(setting, list):
        if len(setting) != len(classes):
            raise SpecError(f"train.class_weights: {len(setting)} weights for {len(classes)} classes "
                            f"({', '.join(classes)}); give one per class, in that order")
        return torch.tensor(setting, dtype=torch.float32)
    counts = class_counts(labels, len(classes)).double().clamp(min=1)
    weights = (counts.sum() / counts) ** power
    return (weights / weights.mean()).float()
