"""`--set KEY=VALUE` overrides: parsed as YAML scalars and applied to a raw recipe before it is validated."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from transferkit.errors import SpecError


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=c' -> (['a', 'b'], c) with c read as a YAML scalar (so numbers, booleans and lists work)."""
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optimizer.lr=0.01")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise SpecError(f"--set {text!r}: empty key part; write dotted keys like train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


SHORTHANDS = {("task",): "name", ("data", "labels"): "file"}  # `task: multi_label` means {name: multi_label}


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`raw` with each `--set a.b=c` applied; validation of the result happens afterwards."""
    result = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, part in enumerate(path[:-1]):
            keys = tuple(p for p in path[:depth + 1] if p != "variants")[-2:]
            shorthand = SHORTHANDS.get(keys) or SHORTHANDS.get(keys[-1:])
            if isinstance(node.get(part), str) and shorthand:  # --set task.loss=l1 keeps `task: regression`
                node[part] = {shorthand: node[part]}
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return result
