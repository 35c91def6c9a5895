"""Cross-field checks that need only the recipe itself (no registries, no files): refused when it is read."""

from __future__ import annotations

from transferkit.errors import SpecError
from transferkit.recipe.messages import override_for, yaml_line_of


def _where(source: str, text: str | None, path: tuple, overrides: list[str] | None) -> str:
    """'--set K=V: ' when an override put the value at `path` there, else '<file> line N: '."""
    culprit = override_for(path, overrides)
    return f"--set {culprit}: " if culprit is not None else f"{source}{yaml_line_of(text, path)}: "


def check_pretrained_weights(spec, source: str = "recipe", text: str | None = None,
                             overrides: list[str] | None = None) -> None:
    """Refuse `backbone.weights` set where `backbone.pretrained` is false: those weights would never load.

    A variant that only sets `pretrained: false` over a base with weights is the same network from random
    init, and is allowed; a variant (or base) that names weights and turns pretraining off is refused.
    """
    backbone = spec.backbone
    if not backbone.pretrained and backbone.weights:
        where = _where(source, text, ("backbone", "weights"), overrides)
        raise SpecError(f"{where}backbone.weights: '{backbone.weights}' is set but backbone.pretrained is false, "
                        f"so it would never be loaded (random init); remove backbone.weights or set "
                        f"backbone.pretrained: true")
    for name, override in spec.variants.items():
        own = override.get("backbone") if isinstance(override, dict) else None
        if not isinstance(own, dict) or not own.get("weights"):
            continue
        pretrained = own.get("pretrained", backbone.pretrained)
        if pretrained is False or (isinstance(pretrained, str) and pretrained.lower() in ("false", "no", "off")):
            path = ("variants", name, "backbone", "weights")
            where = _where(source, text, path, overrides)
            raise SpecError(f"{where}variants.{name}.backbone.weights: '{own['weights']}' is set but the variant's "
                            f"backbone.pretrained is false, so it would never be loaded; remove the weights or set "
                            f"pretrained: true in variants.{name}")


def check_recipe(spec, source: str = "recipe", text: str | None = None, overrides: list[str] | None = None) -> None:
    """Every cross-field check of a validated recipe (its variants included); SpecError on the first problem."""
    check_pretrained_weights(spec, source, text, overrides)
