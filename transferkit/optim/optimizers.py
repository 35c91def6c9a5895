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
                           nesterov=spec.nesterov and spec.momentum > 0, **fused_on_cpu(groups))


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    import torch

    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay,
                             **fused_on_cpu(groups))


def fused_on_cpu(groups: list[dict]) -> dict:
    """{"fused": True} when every parameter is a floating-point CPU tensor and this torch has fused CPU kernels.

    PyTorch's CPU default does not fuse; the fused kernel updates each tensor in one pass, several times faster
    (measured in docs/performance.md, "The folder pipeline at scale"). Elsewhere PyTorch's own
    default (foreach on CUDA) stays.
    """
    import torch

    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        supported = "cpu" in _get_fused_kernels_supported_devices()
    except ImportError:
        supported = False
    params = [p for group in groups for p in group["params"]]
    cpu_floats = bool(params) and all(p.device.type == "cpu" and p.is_floating_point() for p in params)
    return {"fused": True} if supported and cpu_floats else {}


def build_optimizer(spec: OptimizerSpec, groups: list[dict]) -> torch.optim.Optimizer:
    """The recipe's optimizer over the policy's named groups (each group keeps its own LR)."""
    return OPTIMIZERS.get(spec.name)(groups, spec)
