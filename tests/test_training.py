"""Real training at 32 px: LR policies inside the optimizer, frozen weights, API results, the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import run_cli, tiny_recipe
from transferkit import BACKBONES, HEADS, Experiment
from transferkit.model.backbones import Backbone
from transferkit.run.assemble import build_variant
from transferkit.optim.optimizers import build_optimizer
from transferkit.model.preprocess import Preprocessing
from transferkit.callbacks.checkpoint import load_checkpoint
from transferkit.recipe.load import validate


def test_head_multiplier_puts_10x_lr_on_the_head_inside_the_optimizer(image_root):
    spec = validate(tiny_recipe(image_root, optimizer={"lr": 0.003}, lr_policy={"name": "head_multiplier"}))
    built = build_variant(spec)
    optimizer = build_optimizer(spec.optimizer, built.param_groups)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"backbone": pytest.approx(0.003), "head": pytest.approx(0.03)}
    head_group = next(g for g in optimizer.param_groups if g["name"] == "head")
    assert {id(p) for p in head_group["params"]} == {id(p) for p in built.model.head.parameters()}


def test_layerwise_decay_shrinks_lr_from_head_to_stem(image_root):
    spec = validate(tiny_recipe(image_root, lr_policy={"name": "layerwise_decay", "decay": 0.5, "multiplier": 1}))
    groups = build_variant(spec).param_groups
    assert groups[-1]["name"] == "head" and groups[-1]["lr"] == pytest.approx(0.01)
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs) and lrs[0] < lrs[-1] / 100
    assert groups[0]["name"] == "backbone.conv1"
    total = sum(p.numel() for g in groups for p in g["params"])
    assert total == sum(p.numel() for p in build_variant(spec).model.parameters())


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics_bit_identical(image_root, tmp_path):
    raw = tiny_recipe(image_root, lr_policy={"name": "frozen_backbone", "feature_cache": False},
                      optimizer={"lr": 0.1}, train={"epochs": 2}, output_dir=str(tmp_path / "runs"))
    initial = build_variant(validate(raw)).model.state_dict()
    result = Experiment.from_dict(raw).run(progress=False)
    trained = load_checkpoint(result["base"].run_dir / "last.pt")["model"]
    backbone_keys = [k for k in initial if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone_keys)
    for key in backbone_keys:
        assert torch.equal(initial[key], trained[key]), key
    assert not torch.equal(initial["head.weight"], trained["head.weight"])
    groups = json.loads((result["base"].run_dir / "param_groups.json").read_text())
    assert [g["name"] for g in groups] == ["head"]


def test_api_runs_variants_and_returns_per_epoch_metrics(image_root, tmp_path):
    raw = tiny_recipe(image_root, train={"epochs": 2}, output_dir=str(tmp_path / "runs"),
                      variants={"probe": {"lr_policy": {"name": "frozen_backbone"}}})
    result = Experiment.from_dict(raw).run(progress=False)
    assert list(result.variants) == ["base", "probe"]
    for variant in result.variants.values():
        assert [row["epoch"] for row in variant.history] == [1, 2]
        assert 0.0 <= variant.final["test_accuracy"] <= 1.0
        for name in ("spec.yaml", "param_groups.json", "metrics.csv", "metrics.json", "last.pt", "best.pt"):
            assert (variant.run_dir / name).is_file(), name
    checkpoint = load_checkpoint(result["base"].run_dir / "last.pt")
    assert checkpoint["classes"] == ["cat", "dog"] and checkpoint["preprocessing"]["input_size"] == 32
    assert (result.run_root / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_script_registered_backbone_and_head_are_usable_in_a_recipe(image_root, tmp_path):
    @BACKBONES.register("tiny_cnn")
    def tiny_cnn(spec):
        """A two-layer CNN for tests."""
        module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return Backbone(module, 8, Preprocessing(input_size=32, resize_size=36), "tiny_cnn")

    @HEADS.register("doubled")
    def doubled(num_features, num_classes, spec):
        """Linear head on features times two."""
        return nn.Sequential(nn.Linear(num_features, num_classes))

    try:
        raw = tiny_recipe(image_root, backbone={"name": "tiny_cnn"}, head={"name": "doubled"},
                          output_dir=str(tmp_path / "runs"))
        result = Experiment.from_dict(raw).run(progress=False)
        assert result["base"].param_groups[0]["params"] == 3 * 8 * 9 + 8
    finally:
        BACKBONES.unregister("tiny_cnn")
        HEADS.unregister("doubled")


def test_timm_backbone_builds_and_trains(image_root, tmp_path):
    raw = tiny_recipe(image_root, backbone={"name": "timm/resnet10t", "pretrained": False},
                      output_dir=str(tmp_path / "runs"))
    result = Experiment.from_dict(raw).run(progress=False)
    assert result["base"].param_groups[0]["params"] > 1_000_000
    before = build_variant(validate(raw)).model.state_dict()
    after = load_checkpoint(result["base"].run_dir / "last.pt")["model"]
    assert not torch.equal(before["backbone.conv1.0.weight"], after["backbone.conv1.0.weight"])


def test_imagenet_weights_load_through_torchvision_cache(tmp_path, monkeypatch):
    import torchvision

    from transferkit.model.backbones import build_backbone
    from transferkit.recipe.spec import BackboneSpec

    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(123)
    reference = torchvision.models.resnet18().state_dict()
    torch.save(reference, checkpoints / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    backbone = build_backbone(BackboneSpec(name="resnet18", weights="IMAGENET1K_V1"))
    assert backbone.weights == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert backbone.num_features == 512
    state = backbone.module.state_dict()
    assert "fc.weight" not in state
    for key, value in state.items():
        assert torch.equal(value, reference[key]), key
    prep = backbone.preprocessing
    assert (prep.input_size, prep.resize_size, prep.mean) == (224, 256, (0.485, 0.456, 0.406))


@pytest.mark.parametrize("name", ["timm/mobilenetv3_small_050", "timm/resnet18"])
def test_timm_backbones_report_the_width_of_the_features_they_return(name):
    from transferkit.model.backbones import build_backbone
    from transferkit.recipe.spec import BackboneSpec

    backbone = build_backbone(BackboneSpec(name=name, pretrained=False))
    with torch.no_grad():
        features = backbone.module.eval()(torch.zeros(1, 3, 32, 32))
    assert features.shape == (1, backbone.num_features)


def test_cli_runs_recipe_with_variants_and_prints_the_comparison(image_root, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(tiny_recipe(image_root, base_variant="finetune", variants={
        "scratch": {"optimizer": {"lr": 0.02}, "lr_policy": {"name": "uniform"}},
        "probe": {"lr_policy": {"name": "frozen_backbone"}}}), sort_keys=False))
    result = run_cli("run", str(recipe), "--output", str(tmp_path / "out"), "--set", "train.epochs=1")
    assert result.returncode == 0, result.stderr
    table = result.stderr[result.stderr.index("variants compared"):]
    for variant in ("finetune", "scratch", "probe"):
        assert variant in table
    assert "param group head" in result.stderr and "lr 0.1" in result.stderr
    comparison = json.loads((tmp_path / "out" / "tiny" / "comparison.json").read_text())
    assert [row["variant"] for row in comparison] == ["finetune", "scratch", "probe"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for an absent GPU")
def test_cli_absent_device_is_a_clear_error(image_root, tmp_path):
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(image_root)))
    result = run_cli("run", str(recipe), "--device", "cuda:1", "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "no CUDA GPU is available" in result.stderr and "Traceback" not in result.stderr
