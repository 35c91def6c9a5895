"""A trial's point in the search space: each key of `tune.space` sampled through Optuna's trial, and the recipe
that point makes (the base recipe with those values, without its `tune:` and `variants:`)."""

from __future__ import annotations

from typing import Any

from transferkit.recipe.search_space import field_annotation, number_kind, with_value
from transferkit.recipe.spec import SearchParam


def suggest(trial, space: dict[str, SearchParam]) -> dict[str, Any]:
    """The trial's value of every key, sampled by the study's sampler (integers for an integer key)."""
    params: dict[str, Any] = {}
    for key, param in space.items():
        if param.choices is not None:
            params[key] = trial.suggest_categorical(key, param.choices)
        elif number_kind(field_annotation(key)) == "int":
            params[key] = trial.suggest_int(key, int(param.low), int(param.high), step=int(param.step or 1),
                                            log=param.log)
        else:
            params[key] = trial.suggest_float(key, param.low, param.high, step=param.step, log=param.log)
    return params


def point_recipe(base: dict, params: dict[str, Any]) -> dict:
    """The recipe of one point: `base` (a raw recipe mapping) without tune and variants, each param set."""
    recipe = {key: value for key, value in base.items() if key not in ("tune", "variants")}
    for key, value in params.items():
        recipe = with_value(recipe, key, value)
    return recipe


def describe(params: dict[str, Any]) -> str:
    """'optimizer.lr=0.00123, train.label_smoothing=0.1'."""
    return ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())
