"""LR policies: turn backbone + head + base LR into explicit optimizer parameter groups."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transferkit.registry import LR_POLICIES
from transferkit.recipe.spec import LRPolicySpec

if TYPE_CHECKING:  # torch is imported by the functions that use it: listing the policies needs none
    from torch import nn

    from transferkit.model.transfer import TransferModel


def _group(name: str, module_or_params, lr: float) -> dict:
    from torch import nn

    params = list(module_or_params.parameters()) if isinstance(module_or_params, nn.Module) else list(module_or_params)
    return {"name": name, "params": [p for p in params if p.requires_grad], "lr": lr}


@LR_POLICIES.register("uniform")
def uniform(model: TransferModel, spec: LRPolicySpec, base_lr: float) -> list[dict]:
    """Every parameter at the base LR (training from scratch, or plain fine-tuning)."""
    model.set_backbone_frozen(False)
    return [_group("all", model, base_lr)]


@LR_POLICIES.register("head_multiplier")
def head_multiplier(model: TransferModel, spec: LRPolicySpec, base_lr: float) -> list[dict]:
    """Backbone at the base LR, the new head at base LR x multiplier (10 in d2l's fine-tuning)."""
    model.set_backbone_frozen(False)
    return [_group("backbone", model.backbone, base_lr), _group("head", model.head, base_lr * spec.multiplier)]


@LR_POLICIES.register("frozen_backbone")
def frozen_backbone(model: TransferModel, spec: LRPolicySpec, base_lr: float) -> list[dict]:
    """Linear probe: backbone frozen (weights and batch-norm statistics) and out of the optimizer."""
    model.set_backbone_frozen(True)
    return [_group("head", model.head, base_lr)]


def depth_blocks(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's parameterised blocks from stem to top: top-level children, sequences expanded one level."""
    from torch import nn

    blocks: list[tuple[str, nn.Module]] = []
    for name, child in backbone.named_children():
        if not any(True for _ in child.parameters()):
            continue
        grandchildren = [(f"{name}.{n}", g) for n, g in child.named_children() if any(True for _ in g.parameters())]
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(grandchildren) > 1:
            blocks.extend(grandchildren)
        else:
            blocks.append((name, child))
    direct = [p for n, p in backbone.named_parameters(recurse=False)]
    if direct:  # e.g. a ViT's cls token and position embedding sit at the stem
        blocks.insert(0, ("<stem params>", direct))
    return blocks


@LR_POLICIES.register("layerwise_decay")
def layerwise_decay(model: TransferModel, spec: LRPolicySpec, base_lr: float) -> list[dict]:
    """Head at base LR x multiplier; each backbone block below it gets `decay` times the LR of the block above."""
    from torch import nn

    model.set_backbone_frozen(False)
    blocks = depth_blocks(model.backbone)
    groups = [_group("head", model.head, base_lr * spec.multiplier)]
    for depth, (name, block) in enumerate(reversed(blocks), start=1):
        params = block.parameters() if isinstance(block, nn.Module) else block
        groups.append(_group(f"backbone.{name}", params, base_lr * spec.multiplier * spec.decay ** depth))
    return groups[::-1]


def build_param_groups(model: TransferModel, spec: LRPolicySpec, base_lr: float) -> list[dict]:
    """The named parameter groups of the recipe's policy, empty groups dropped."""
    groups = LR_POLICIES.get(spec.name)(model, spec, base_lr)
    return [g for g in groups if g["params"]]


def describe_groups(groups: list[dict]) -> list[dict]:
    """name, parameter count and LR of each group: what a run prints and saves."""
    return [{"name": g["name"], "params": sum(p.numel() for p in g["params"]), "lr": g.get("initial_lr", g["lr"])}
            for g in groups]
