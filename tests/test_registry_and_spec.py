"""Registries (decorator, did-you-mean, wildcards) and recipes (overrides, variants, one-line errors)."""

from __future__ import annotations

import pytest
import yaml

from conftest import run_cli
from transferkit.errors import NotRegisteredError, SpecError
from transferkit.registry import Registry
from transferkit.recipe.load import parse_recipe, validate
from transferkit.recipe.variants import variant_of


def test_registry_decorator_call_get_and_suggestion():
    registry = Registry("widget", "list-widgets")

    @registry.register("resnet_like")
    def resnet_like():
        """A widget."""

    registry.register("vit_like", lambda: None)
    assert registry.get("resnet_like") is resnet_like
    assert registry.describe("resnet_like") == "A widget."
    with pytest.raises(NotRegisteredError) as err:
        registry.get("resnet_lik")
    assert "did you mean: resnet_like" in str(err.value)
    assert "list-widgets" in str(err.value)
    assert registry.list("*_like") == ["resnet_like", "vit_like"]
    assert registry.list("VIT*") == ["vit_like"]
    with pytest.raises(ValueError):
        registry.register("vit_like", lambda: 1)


def test_overrides_are_typed_by_the_schema_and_variants_merge():
    spec = validate({"name": "x", "optimizer": {"lr": 0.1}, "lr_policy": {"name": "head_multiplier"},
                     "variants": {"scratch": {"backbone": {"pretrained": False}, "lr_policy": {"name": "uniform"}}}})
    scratch = variant_of(spec, "scratch")
    assert scratch.backbone.pretrained is False and scratch.lr_policy.name == "uniform"
    assert scratch.optimizer.lr == 0.1 and spec.backbone.pretrained is True


def test_set_overrides_from_a_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\noptimizer: {lr: 0.1}\n")
    spec = parse_recipe(path, ["optimizer.lr=5e-5", "train.epochs=3", "data.mean=[0.5,0.5,0.5]",
                              "variants.fast.train.epochs=1"])
    assert spec.optimizer.lr == 5e-5 and spec.train.epochs == 3 and spec.data.mean == (0.5, 0.5, 0.5)
    assert variant_of(spec, "fast").train.epochs == 1


@pytest.mark.parametrize("text, expected", [
    ("name: x\nbackbone:\n  nmae: resnet18\n", ["line 3", "backbone.nmae", "did you mean name"]),
    ("name: x\noptimizer:\n  lr: -1\n", ["line 3", "optimizer.lr", "greater than 0"]),
    ("name: x\ntrain: {epochs: 0}\n", ["train.epochs", "greater than 0"]),
    ("- a\n- b\n", ["top level must be a mapping"]),
    ("name: x\n  bad: [\n", ["YAML syntax error"]),
    ("name: x\nvariants:\n  s: {optimzer: {lr: 1}}\n", ["line 3", "variants.s.optimzer", "did you mean optimizer"]),
    ("name: x\nname: y\n", ["line 2", "appears twice"]),
])
def test_bad_recipe_messages(tmp_path, text, expected):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        parse_recipe(path)
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


def test_cli_bad_recipe_exits_2_with_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nlr_policy: {name: head_multiplyer}\n")
    result = run_cli("run", str(path))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "lr_policy.name" in lines[0] and "did you mean: head_multiplier" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_validate_prints_every_variant_resolved(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nbase_variant: finetune\noptimizer: {lr: 0.1}\ndata: {root: .}\n"
                    "variants:\n  scratch: {optimizer: {lr: 0.5}}\n")
    result = run_cli("validate", str(path), "--set", "train.epochs=2")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert list(resolved) == ["finetune", "scratch"]
    assert resolved["scratch"]["optimizer"]["lr"] == 0.5 and resolved["scratch"]["train"]["epochs"] == 2


def test_cli_lists_backbones_with_wildcards():
    result = run_cli("list-backbones", "resnet1*", "--source", "torchvision")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["resnet101", "resnet152", "resnet18"]
    result = run_cli("list-backbones", "timm/resnet18.*", "--pretrained")
    assert "timm/resnet18.a1_in1k" in result.stdout.split()
    result = run_cli("list-lr-policies")
    for name in ("uniform", "head_multiplier", "frozen_backbone", "layerwise_decay"):
        assert name in result.stdout
