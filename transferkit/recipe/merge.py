"""Merging partial recipes: variants, presets and --set overrides over a base."""

from __future__ import annotations

import copy


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of `base` with `override` merged in, mappings recursively."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
