"""Optimizers and learning-rate schedules built from the recipe."""

from __future__ import annotations

import math

import torch

from transferkit.registry import OPTIMIZERS
from transferkit.spec import OptimizerSpec, ScheduleSpec


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """SGD with optional momentum and Nesterov."""
    return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                           nesterov=spec.nesterov and spec.momentum > 0)


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)


def build_optimizer(spec: OptimizerSpec, groups: list[dict]) -> torch.optim.Optimizer:
    """The recipe's optimizer over the policy's named groups (each group keeps its own LR)."""
    return OPTIMIZERS.get(spec.name)(groups, spec)


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
