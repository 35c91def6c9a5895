"""Variants: named partial recipes merged over the base, each validated as a full recipe of its own."""

from __future__ import annotations

from pydantic import ValidationError

from transferkit.errors import SpecError
from transferkit.recipe.merge import deep_merge
from transferkit.recipe.messages import describe_validation_error, yaml_line_of
from transferkit.recipe.presets import with_preset
from transferkit.recipe.spec import ExperimentSpec


def variant_of(spec: ExperimentSpec, name: str, source: str = "recipe", text: str | None = None,
               overrides: list[str] | None = None) -> ExperimentSpec:
    """The full spec of variant `name`: the base merged with its overrides, without further variants."""
    if name == spec.base_variant:
        return spec.model_copy(update={"variants": {}})
    if name not in spec.variants:
        from transferkit.registry import suggest
        raise SpecError(f"unknown variant '{name}'{suggest(name, [spec.base_variant, *spec.variants])}; "
                        f"variants are: {', '.join([spec.base_variant, *spec.variants])}")
    override = spec.variants[name]
    for key in ("variants", "base_variant"):
        if key in override:
            line = yaml_line_of(text, ("variants", name, key))
            raise SpecError(f"{source}{line}: variants.{name}.{key}: a variant may not set '{key}' "
                            f"(variants do not nest); remove that key from variants.{name}")
    base = spec.model_dump(mode="python", exclude={"variants"})
    try:
        return ExperimentSpec.model_validate(deep_merge(base, with_preset(override)))
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc, ExperimentSpec, source, text,
                                                  prefix=("variants", name), overrides=overrides)) from None


def variant_names(spec: ExperimentSpec) -> list[str]:
    """The base run's name followed by the variants', in recipe order."""
    return [spec.base_variant, *spec.variants]


def changed_settings(base: dict, other: dict, prefix: str = "") -> list[str]:
    """'optimizer.lr: 5e-05 -> 0.0005' for every leaf setting in which `other` differs from `base`."""
    lines = []
    for key in [*base, *(k for k in other if k not in base)]:
        a, b, name = base.get(key), other.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            lines += changed_settings(a, b, f"{name}.")
        elif a != b:
            lines.append(f"{name}: {a!r} -> {b!r}")
    return lines
