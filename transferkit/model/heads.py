"""Heads: the freshly initialised classifier put on top of a backbone's pooled features."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transferkit.registry import HEADS
from transferkit.recipe.spec import HeadSpec

if TYPE_CHECKING:  # imported where a head is built: listing them needs no torch
    from torch import nn


@HEADS.register("linear")
def linear_head(num_features: int, num_classes: int, spec: HeadSpec) -> nn.Module:
    """One Linear layer with Xavier-uniform weights (as d2l's fine-tuning seed), optional dropout before it."""
    from torch import nn

    layer = nn.Linear(num_features, num_classes)
    nn.init.xavier_uniform_(layer.weight)
    return nn.Sequential(nn.Dropout(spec.dropout), layer) if spec.dropout > 0 else layer


@HEADS.register("mlp")
def mlp_head(num_features: int, num_classes: int, spec: HeadSpec) -> nn.Module:
    """Linear -> ReLU -> Dropout -> Linear, with `hidden` units."""
    from torch import nn

    first, last = nn.Linear(num_features, spec.hidden), nn.Linear(spec.hidden, num_classes)
    for layer in (first, last):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(first, nn.ReLU(inplace=True), nn.Dropout(spec.dropout), last)


def build_head(spec: HeadSpec, num_features: int, num_classes: int) -> nn.Module:
    """The head a recipe names, sized for the backbone's features and the data's classes."""
    return HEADS.get(spec.name)(num_features, num_classes, spec)
