"""Learning-rate schedules: a multiplier of each group's initial LR per optimizer update."""

from __future__ import annotations

import math

import torch

from transferkit.recipe.spec import ScheduleSpec


class LRFactor:
    """Multiplier of each group's initial LR at a given optimizer step: warm-up, then constant/step/cosine."""

    # Plain attributes only: LambdaLR saves them in its state dict, which checkpoints load with weights_only.
    def __init__(self, spec: ScheduleSpec, steps_per_epoch: int, epochs: int):
        self.name, self.gamma, self.min_lr_ratio = spec.name, spec.gamma, spec.min_lr_ratio
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.step_size = spec.step_size * self.steps_per_epoch
        self.total = self.steps_per_epoch * epochs
        self.warmup = round(spec.warmup_epochs * self.steps_per_epoch)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.name == "step":
            return self.gamma ** (step // self.step_size)
        if self.name == "cosine":
            progress = (step - self.warmup) / max(1, self.total - self.warmup)
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0


def build_scheduler(spec: ScheduleSpec, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int):
    """A per-step LambdaLR for the schedule, or None for a constant LR without warm-up."""
    if spec.name == "constant" and spec.warmup_epochs == 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor(spec, steps_per_epoch, epochs))
