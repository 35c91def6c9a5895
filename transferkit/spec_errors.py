"""Turn pydantic validation errors into one line naming the field, the YAML line and the fix."""

from __future__ import annotations

import typing
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


def yaml_line_of(text: str | None, path: tuple) -> str:
    """' line N' where the deepest existing key of `path` sits in the YAML `text`, or ''."""
    if not text:
        return ""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return ""
    line = None
    for part in path:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == str(part):
                line = key_node.start_mark.line + 1
                node = value_node
                break
        else:
            break
    return f" line {line}" if line else ""


def model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that holds the last element of `loc`, walking nested fields."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
        for arg in typing.get_args(current) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _fix_for(error: dict, model: type[BaseModel], loc: tuple) -> str:
    from transferkit.registry import suggest

    kind = error["type"]
    if kind == "extra_forbidden":
        holder = model_at(model, loc)
        valid = list(holder.model_fields) if holder else []
        hint = suggest(str(loc[-1]), valid, n=1)
        if hint:
            return f"unknown key{hint.replace('did you mean:', 'did you mean')}; rename or remove it"
        return f"unknown key; valid keys here: {', '.join(valid)}" if valid else "unknown key; remove it"
    message = error["msg"]
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{message}; got {error.get('input')!r}"
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        return f"{message}; got {error.get('input')!r}"
    return message


def describe_validation_error(exc: ValidationError, model: type[BaseModel], source: str,
                              text: str | None = None, prefix: tuple = ()) -> str:
    """One line: '<file> line N: <field>: <problem and fix> (and K more problems)'."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    field = ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"
    line = yaml_line_of(text, (*prefix, *loc))
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{source}{line}: {field}: {_fix_for(first, model, loc)}{more}"
