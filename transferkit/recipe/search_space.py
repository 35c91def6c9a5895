"""The `tune:` section checked against the recipe's own keys: each key of the search space is a recipe key that
takes a value, a range fits a number key, and every choice and bound is a value that key accepts.

Run in the contradictions phase (recipe/check.py), so `validate`, `run` and `tune` refuse a bad space when the
recipe is read, naming its line. Needs no torch and no Optuna.
"""

from __future__ import annotations

import copy
import typing
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from transferkit.errors import SpecError
from transferkit.recipe.messages import first_problem, key_line, yaml_line_of
from transferkit.recipe.spec import ExperimentSpec, SearchParam

if TYPE_CHECKING:
    from transferkit.recipe.load import Recipe

# Keys that name the experiment or its structure rather than how it trains: a search over them is refused.
NOT_SEARCHED = ("name", "description", "output_dir", "base_variant", "variants", "tune", "preset")
CATEGORICAL = (type(None), bool, int, float, str)  # what Optuna's suggest_categorical stores


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (also inside `Model | None`), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def field_annotation(key: str) -> Any:
    """The type annotation of the recipe field at dotted `key`; ValueError naming the problem and the fix.

    A key below a mapping of options (`head.options.width`) is accepted as it is: its item checks it later.
    """
    from transferkit.registry import suggest

    parts = key.split(".")
    if parts[0] in NOT_SEARCHED:
        raise ValueError(f"{parts[0]} names the experiment, not a setting to search; search a training setting "
                         f"(optimizer.lr, train.epochs, ...)")
    model: type[BaseModel] = ExperimentSpec
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            above = ".".join(parts[:depth])
            candidates = [f"{above}.{name}" if above else name for name in fields]
            close = suggest(".".join(parts[:depth + 1]), candidates, n=1)
            raise ValueError(f"unknown recipe key {key}{close}; a space key is a dotted recipe key such as "
                             f"optimizer.lr (docs/recipe.md)")
        annotation = fields[part].annotation
        inner, rest = _model_in(annotation), parts[depth + 1:]
        if not rest:
            if inner is not None:
                first = next(iter(inner.model_fields))
                raise ValueError(f"{key} is a section; name one of its keys, e.g. {key}.{first}")
            return annotation
        if inner is not None:
            model = inner
            continue
        if typing.get_origin(annotation) is dict:
            return Any
        raise ValueError(f"{'.'.join(parts[:depth + 1])} takes a value, it has no key {rest[0]}")
    raise AssertionError("unreachable")


def number_kind(annotation: Any) -> str | None:
    """'int' or 'float' for a field that takes a number (a range can be searched), else None."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) is not None else (annotation,)
    if bool in members or annotation is Any:
        return None
    return "float" if float in members else "int" if int in members else None


def with_value(raw: dict, key: str, value: Any) -> dict:
    """A deep copy of the recipe mapping `raw` with dotted `key` set to `value` (sections created as needed)."""
    result = copy.deepcopy(raw)
    node = result
    *sections, last = key.split(".")
    for part in sections:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value
    return result


def _refusal(base: dict, key: str, value: Any) -> str | None:
    """Why the recipe with `key` set to `value` is refused by the schema, or None when it is accepted."""
    try:
        ExperimentSpec.model_validate(with_value(base, key, value))
    except ValidationError as exc:
        location, fix = first_problem(exc, ExperimentSpec)
        return fix if location == key else f"{location}: {fix}"
    return None


def space_problem(base: dict, key: str, param: SearchParam) -> str | None:
    """What is wrong with one key of the search space, with the fix; None when it is sound.

    `base` is the recipe as plain data (the values not searched); each choice and bound is tried in it.
    """
    try:
        annotation = field_annotation(key)
    except ValueError as exc:
        return str(exc)
    kind = number_kind(annotation)
    if param.choices is not None:
        for choice in param.choices:
            if not isinstance(choice, CATEGORICAL):
                return (f"choice {choice!r} is a {type(choice).__name__}; choices are numbers, strings, booleans or "
                        f"null (Optuna's categorical values)")
            refused = _refusal(base, key, choice)
            if refused:
                return f"choice {choice!r} is not a value {key} takes: {refused}"
        return None
    if kind is None:
        return f"{key} does not take a number, so it has no range; give a list of choices instead"
    bounds = [("low", param.low), ("high", param.high)]
    if kind == "int":
        for name, value in [*bounds, ("step", param.step)]:
            if value is not None and not float(value).is_integer():
                return f"{key} takes whole numbers, and {name} is {value:g}; use integers"
    for name, value in bounds:
        value = int(value) if kind == "int" else value
        refused = _refusal(base, key, value)
        if refused:
            return f"{name} {value:g} is not a value {key} takes: {refused}"
    return None


def check_search_space(recipe: Recipe) -> None:
    """Refuse the first unsound key of the recipe's `tune.space` (and a test metric reached through auto),
    naming the file and line."""
    spec = recipe.spec
    if spec.tune is None:
        return
    text = recipe.text
    if spec.tune.metric == "auto" and spec.train.best_metric.startswith("test_"):
        line = yaml_line_of(text, ("tune", "metric"))
        raise SpecError(f"{recipe.source}{line}: tune.metric: auto would optimise train.best_metric "
                        f"{spec.train.best_metric}, a test metric; set tune.metric: "
                        f"val_{spec.train.best_metric.removeprefix('test_')}")
    base = spec.model_dump(mode="json", exclude={"tune", "variants"})
    for key, param in spec.tune.space.items():
        problem = space_problem(base, key, param)
        if problem:
            line = key_line(text, ("tune", "space", key)) or yaml_line_of(text, ("tune", "space"))
            raise SpecError(f"{recipe.source}{line}: tune.space.{key}: {problem}")
