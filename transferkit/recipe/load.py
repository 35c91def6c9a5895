"""Reading a recipe: a file (or registered name) or a dict, `--set` overrides applied, and the two validation
phases that need nothing but the recipe itself: schema, then contradictions.

The full pipeline, with the phases that need the registries, the file system and torch, is run/validation.py;
`transferkit.load_recipe` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from transferkit.errors import SpecError
from transferkit.recipe.check import check_recipe_contradictions
from transferkit.recipe.messages import describe_validation_error, yaml_line_of
from transferkit.recipe.overrides import apply_overrides
from transferkit.recipe.paths import resolve_override_paths, resolve_recipe_paths
from transferkit.recipe.presets import with_preset
from transferkit.recipe.spec import ExperimentSpec
from transferkit.recipe.variants import variant_names, variant_of
from transferkit.recipe.yaml_io import read_yaml


@dataclass
class Recipe:
    """A recipe on its way through the validation phases: the raw mapping and where it came from, and its spec
    once the schema phase has made one (or given as a spec already)."""

    raw: dict | None = None
    source: str = "recipe"
    text: str | None = None
    overrides: list[str] | None = None
    spec: ExperimentSpec | None = None

    def __post_init__(self):
        if self.text is None and self.source != "recipe":  # messages name the file's lines
            try:
                self.text = Path(self.source).read_text(encoding="utf-8") if Path(self.source).is_file() else None
            except (OSError, UnicodeDecodeError, ValueError):
                self.text = None

    def variants(self) -> dict[str, ExperimentSpec]:
        """Each run's full spec, base first: name -> spec."""
        return {name: variant_of(self.spec, name, self.source, self.text, self.overrides)
                for name in variant_names(self.spec)}


def read_recipe(path_or_name: str | Path, overrides: list[str] | None = None) -> Recipe:
    """A recipe file (or a plugin-registered recipe name) read, its paths resolved and `--set` overrides applied."""
    path = Path(path_or_name)
    if not path.exists():
        from transferkit.registry import RECIPES
        if str(path_or_name) in RECIPES:
            path = Path(RECIPES.get(str(path_or_name)))
    raw = resolve_recipe_paths(read_yaml(path), path.parent)  # a recipe's paths: relative to its folder
    if not raw and not overrides:
        raise SpecError(f"{path}: the recipe is empty; give at least data.root (a folder with train/ and test/ "
                        f"class folders); every key is in docs/recipe.md")
    text = path.read_text(encoding="utf-8")
    applied = resolve_override_paths(overrides or [], Path.cwd())  # --set paths: relative to the working dir
    return Recipe(apply_overrides(raw, applied), str(path), text, overrides)


def recipe_of_dict(raw: dict, overrides: list[str] | None = None) -> Recipe:
    """A recipe given as a plain dict, `--set`-style overrides applied (paths relative to the working directory)."""
    return Recipe(apply_overrides(raw, overrides or []), "recipe", None, overrides)


def check_schema(recipe: Recipe) -> None:
    """Phase 'schema': the pydantic models (preset merged under the recipe), and every variant as a full recipe."""
    if recipe.spec is None:
        try:
            recipe.spec = ExperimentSpec.model_validate(with_preset(recipe.raw))
        except ValidationError as exc:
            raise SpecError(describe_validation_error(exc, ExperimentSpec, recipe.source, recipe.text,
                                                      overrides=recipe.overrides)) from None
    spec = recipe.spec
    if spec.base_variant in spec.variants:
        line = yaml_line_of(recipe.text, ("variants", spec.base_variant))
        raise SpecError(f"{recipe.source}{line}: variants.{spec.base_variant}: the name clashes with base_variant "
                        f"'{spec.base_variant}'; rename the variant or set base_variant")
    recipe.variants()


# The phases that need only the recipe, in order: the first two of run/validation.py's PHASES.
RECIPE_PHASES = (("schema", check_schema), ("contradictions", check_recipe_contradictions))


def validate(raw: dict, source: str = "recipe", text: str | None = None,
             overrides: list[str] | None = None) -> ExperimentSpec:
    """A raw recipe dict through the schema and contradiction phases, variants included; SpecError naming the field,
    line (or `--set`) and fix otherwise. Registered names, files and the device are not looked at."""
    recipe = Recipe(raw, source, text, overrides)
    for _, phase in RECIPE_PHASES:
        phase(recipe)
    return recipe.spec


def parse_recipe(path_or_name: str | Path, overrides: list[str] | None = None) -> ExperimentSpec:
    """A recipe file (or registered name) read, overridden and through the schema and contradiction phases only;
    `transferkit.load_recipe` runs every phase."""
    recipe = read_recipe(path_or_name, overrides)
    for _, phase in RECIPE_PHASES:
        phase(recipe)
    return recipe.spec
