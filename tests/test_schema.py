"""The recipe's JSON Schema and docs/recipe.md are generated from the pydantic models and kept up to date; every
example recipe names the schema and validates against it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from transferkit.cli import app
from transferkit.recipe.schema import json_schema, json_schema_text, markdown
from transferkit.recipe.spec import ExperimentSpec

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(REPO.glob("examples/*/recipe.yaml"))
REGENERATE = "run `transferkit schema -o docs/recipe.schema.json` and `transferkit schema --markdown -o docs/recipe.md`"


def test_committed_schema_and_reference_are_up_to_date():
    assert (REPO / "docs" / "recipe.schema.json").read_text() == json_schema_text(), REGENERATE
    assert (REPO / "docs" / "recipe.md").read_text() == markdown(), REGENERATE


def test_schema_and_reference_hold_every_key_with_its_description():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    text = markdown()
    for section, field in ExperimentSpec.model_fields.items():
        assert field.description and schema["properties"][section]["description"] == field.description
        model = field.annotation if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields") else None
        for key, sub in (model.model_fields.items() if model else ()):
            assert sub.description, f"{section}.{key} has no description"
            assert f"| `{section}.{key}` |" in text
            assert schema["$defs"][model.__name__]["properties"][key]["description"] == sub.description


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_example_recipe_names_the_schema_and_validates(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    target = (path.parent / first.partition("$schema=")[2]).resolve()
    assert target == REPO / "docs" / "recipe.schema.json"
    validator = jsonschema.Draft202012Validator(json.loads(target.read_text()))
    recipe = yaml.safe_load(path.read_text())
    assert list(validator.iter_errors(recipe)) == []
    recipe["data"]["batchsize"] = 8  # a typo the editor must flag
    assert any("batchsize" in error.message for error in validator.iter_errors(recipe))
    recipe["data"].pop("batchsize")
    recipe.setdefault("variants", {})["other"] = {"optimizer": {"lrr": 0.1}}  # inside a variant too
    assert any("lrr" in error.message for error in validator.iter_errors(recipe))


def test_schema_command_writes_both_files(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["schema", "-o", str(tmp_path / "s.json")]).exit_code == 0
    assert (tmp_path / "s.json").read_text() == json_schema_text()
    assert runner.invoke(app, ["schema", "--markdown", "-o", str(tmp_path / "r.md")]).exit_code == 0
    assert (tmp_path / "r.md").read_text() == markdown()
