"""The registered optimizers, built over an LR policy's named parameter groups."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transferkit.registry import OPTIMIZERS
from transferkit.recipe.spec import OptimizerSpec

if TYPE_CHECKING:  # imported where an optimizer is built: listing them needs no torch
    import torch


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """SGD with optional momentum and Nesterov."""
    import torch

    return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                           nesterov=spec.nesterov and spec.momentum > 0)


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    import torch

    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)


def build_optimizer(spec: OptimizerSpec, groups: list[dict]) -> torch.optim.Optimizer:
    """The recipe's optimizer over the policy's named groups (each group keeps its own LR)."""
    return OPTIMIZERS.get(spec.name)(groups, spec)
