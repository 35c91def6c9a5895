"""Learning-rate schedules: a multiplier of each group's initial LR per optimizer update."""

from __future__ import annotations

import math

import torch

from transferkit.recipe.spec import ScheduleSpec


def _cosine(progress: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


class LRFactor:
    """Multiplier of each group's initial LR at a given optimizer update: warm-up, then constant/step/cosine,
    or onecycle (the recipe's LR is its peak). Steps are optimizer updates, so accumulation shortens them."""

    # Plain attributes only: LambdaLR saves them in its state dict, which checkpoints load with weights_only.
    def __init__(self, spec: ScheduleSpec, updates_per_epoch: int, epochs: int):
        self.name, self.gamma, self.min_lr_ratio = spec.name, spec.gamma, spec.min_lr_ratio
        self.updates_per_epoch = max(1, updates_per_epoch)
        self.step_size = spec.step_size * self.updates_per_epoch
        self.total = self.updates_per_epoch * epochs
        self.warmup = spec.warmup_steps or round(spec.warmup_epochs * self.updates_per_epoch)
        self.pct_start = spec.pct_start
        self.rise = max(1, round(spec.pct_start * self.total))
        self.start = 1.0 / spec.div_factor
        self.end = 1.0 / (spec.div_factor * spec.final_div_factor)

    def resize(self, epochs: int) -> None:
        """Stretch or shrink the schedule to `epochs` (a time budget decided the length after it started)."""
        self.total = self.updates_per_epoch * epochs
        self.rise = max(1, round(self.pct_start * self.total))

    def __call__(self, step: int) -> float:
        if self.name == "onecycle":  # cosine rise from start to 1, then cosine fall from 1 to end
            if step < self.rise:
                return self.start + (1 - self.start) * (1 - _cosine(step / self.rise))
            return self.end + (1 - self.end) * _cosine((step - self.rise) / max(1, self.total - self.rise))
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.name == "step":
            return self.gamma ** (step // self.step_size)
        if self.name == "cosine":
            progress = (step - self.warmup) / max(1, self.total - self.warmup)
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * _cosine(progress)
        return 1.0


def build_scheduler(spec: ScheduleSpec, optimizer: torch.optim.Optimizer, updates_per_epoch: int, epochs: int):
    """A per-update LambdaLR for the schedule, or None for a constant LR without warm-up."""
    if spec.name == "constant" and spec.warmup_epochs == 0 and spec.warmup_steps == 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor(spec, updates_per_epoch, epochs))
