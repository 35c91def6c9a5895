"""Turn pydantic validation errors into one line naming the field, the YAML line and the fix."""

from __future__ import annotations

import typing
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


def yaml_line_of(text: str | None, path: tuple, exact: bool = False) -> str:
    """' line N' where the deepest existing key of `path` sits in the YAML `text`, or ''.

    With `exact`, '' unless every key of `path` is present.
    """
    if not text:
        return ""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return ""
    line = None
    for part in path:
        found = isinstance(node, yaml.MappingNode) and next(
            ((k, v) for k, v in node.value if k.value == str(part)), None)
        if not found:
            if exact:
                return ""
            break
        line, node = found[0].start_mark.line + 1, found[1]
    return f" line {line}" if line else ""


def key_line(text: str | None, path: tuple) -> str:
    """' line N' where the full key `path` sits in the YAML `text`; '' when some key of it is absent."""
    return yaml_line_of(text, path, exact=True)


def where_in_recipe(source: str, field: str, variant: str = "", base_variant: str = "base") -> str:
    """'<file> line N: [variant V: ]' for a message about dotted `field` of recipe file `source`.

    The line is the variant's own key when the variant sets `field`, else the base recipe's.
    """
    from pathlib import Path

    text = None
    try:
        if Path(source).is_file():
            text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError):
        text = None
    keys = tuple(field.split("."))
    in_variant = bool(variant) and variant != base_variant
    line = (key_line(text, ("variants", variant, *keys)) if in_variant else "") or yaml_line_of(text, keys)
    return f"{source}{line}: " + (f"variant {variant}: " if in_variant else "")


def model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that holds the last element of `loc`, walking nested fields."""
    current: Any = model
    keyed = False  # the previous field was a mapping of models: this part of `loc` is one of its keys
    for part in loc[:-1]:
        if keyed:
            keyed = False
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
        keyed = typing.get_origin(current) is dict
        for arg in typing.get_args(current) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
    return current if isinstance(current, type) and issubclass(current, BaseModel) and not keyed else None


def _tuple_length(model: type[BaseModel], loc: tuple) -> int | None:
    """N when the field at `loc` is a fixed-length tuple (tuple[float, float, float]), else None."""
    holder = model_at(model, loc)
    field = holder.model_fields.get(str(loc[-1])) if holder else None
    if field is None:
        return None
    for candidate in (field.annotation, *typing.get_args(field.annotation)):
        if typing.get_origin(candidate) is tuple:
            args = typing.get_args(candidate)
            return len(args) if args and Ellipsis not in args else None
    return None


def _fix_for(error: dict, model: type[BaseModel], loc: tuple) -> str:
    from transferkit.registry import suggest

    kind = error["type"]
    length = _tuple_length(model, loc) if loc else None
    if length and kind in ("missing", "too_long", "tuple_type", "list_type"):
        example = ", ".join(["0.5"] * length) if length == 3 else ", ".join(["1.0"] * length)
        return f"expected a list of exactly {length} values, e.g. [{example}]; got {error.get('input')!r}"
    if kind == "string_pattern_mismatch":
        return (f"use only letters, digits, '_', '.' and '-', starting with a letter or digit; "
                f"got {error.get('input')!r}")
    if kind == "literal_error":
        import re

        choices = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
        hint = suggest(str(error.get("input")), choices, n=1) if isinstance(error.get("input"), str) else ""
        return f"{error['msg']}; got {error.get('input')!r}{hint}"
    if kind == "extra_forbidden":
        holder = model_at(model, loc)
        valid = list(holder.model_fields) if holder else []
        hint = suggest(str(loc[-1]), valid, n=1)
        if hint:
            return f"unknown key{hint.replace('did you mean:', 'did you mean')}; rename or remove it"
        return f"unknown key; valid keys here: {', '.join(valid)}" if valid else "unknown key; remove it"
    message = error["msg"]
    if kind == "value_error":
        return f"{message.removeprefix('Value error, ')}; got {error.get('input')!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{message}; got {error.get('input')!r}"
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        return f"{message}; got {error.get('input')!r}"
    return message


def override_for(path: tuple, overrides: typing.Iterable[str] | None) -> str | None:
    """The `--set KEY=VALUE` text (the last one wins) whose KEY is `path` or lies above or below it, else None."""
    keys = [str(p) for p in path]
    for text in reversed(list(overrides or ())):
        key = text.partition("=")[0].strip().split(".")
        n = min(len(key), len(keys))
        if n and key[:n] == keys[:n]:
            return text
    return None


def describe_validation_error(exc: ValidationError, model: type[BaseModel], source: str,
                              text: str | None = None, prefix: tuple = (),
                              overrides: typing.Iterable[str] | None = None) -> str:
    """One line: '<file> line N: <field>: <problem and fix> (and K more problems)'.

    When a `--set` override put the bad value there, the message names that `--set` instead of a file line.
    """
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    if len(loc) > 1 and isinstance(loc[-1], int) and _tuple_length(model, loc[:-1]):
        loc = loc[:-1]  # data.mean.2 missing -> data.mean: expected 3 values
    field = ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"
    line = yaml_line_of(text, (*prefix, *loc))
    culprit = override_for((*prefix, *loc), overrides)
    if culprit is not None:
        source, line = f"--set {culprit}", ""
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{source}{line}: {field}: {_fix_for(first, model, loc)}{more}"


def first_problem(exc: ValidationError, model: type[BaseModel]) -> tuple[str, str]:
    """(dotted location, problem and fix) of a validation error's first problem, for messages built elsewhere."""
    errors = exc.errors()
    loc = tuple(errors[0]["loc"])
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return ".".join(str(p) for p in loc), _fix_for(errors[0], model, loc) + more
