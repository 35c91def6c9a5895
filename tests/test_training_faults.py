"""Faults during training: unreadable images (skip or fail), non-finite loss, check-data exit codes."""

from __future__ import annotations

import yaml

from conftest import make_image_folder, run_cli, tiny_recipe
from transferkit import Experiment
from transferkit.errors import DataError, TrainingError
from transferkit.callbacks.checkpoint import load_checkpoint

import pytest


def _break_two_images(root):
    (root / "train" / "cat" / "zero.jpg").write_bytes(b"")
    (root / "test" / "dog" / "text.jpg").write_text("not a picture")


def test_on_bad_image_skip_leaves_files_out_names_and_counts_them(tmp_path):
    root = make_image_folder(tmp_path / "data")
    _break_two_images(root)
    raw = tiny_recipe(root, data={"on_bad_image": "skip", "cache": "none"}, output_dir=str(tmp_path / "runs"))
    result = Experiment.from_dict(raw).run(progress=False)
    skipped = sorted(result["base"].skipped_images)
    assert [p.rsplit("/", 1)[-1] for p in skipped] == ["text.jpg", "zero.jpg"]
    assert result["base"].final["test_accuracy"] >= 0.0
    summary = yaml.safe_load((result["base"].run_dir / "summary.json").read_text())
    assert len(summary["skipped_images"]) == 2


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_on_bad_image_fail_stops_naming_the_file(tmp_path, cache):
    root = make_image_folder(tmp_path / "data")
    _break_two_images(root)
    raw = tiny_recipe(root, output_dir=str(tmp_path / "runs"), data={"cache": cache})
    with pytest.raises(DataError) as err:
        Experiment.from_dict(raw).run(progress=False)
    assert "zero.jpg" in str(err.value) or "text.jpg" in str(err.value)
    assert "on_bad_image" in str(err.value)
    # the cache decodes each image at its first use, as without a cache: the run stops in the first epoch
    assert not (tmp_path / "runs" / "tiny" / "base" / "metrics.json").exists()


def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(16, 4))
    raw = tiny_recipe(root, train={"epochs": 3}, output_dir=str(tmp_path / "runs"), optimizer={"lr": 1e-3})
    experiment = Experiment.from_dict(raw)
    experiment.run(progress=False)  # a clean run leaves a good checkpoint in runs/tiny
    explode = Experiment.from_dict(raw, ["optimizer.lr=1e12", "optimizer.momentum=0.9", "train.loss_reduction=sum"])
    with pytest.raises(TrainingError) as err:
        explode.run(progress=False)
    message = str(err.value)
    assert "epoch 1, step" in message and ("nan" in message or "inf" in message)
    assert load_checkpoint(tmp_path / "runs" / "tiny" / "base" / "last.pt")["epoch"] == 3
    assert not (tmp_path / "runs" / "tiny-2" / "base" / "last.pt").exists()


def test_check_data_cli_exit_codes(tmp_path):
    clean = make_image_folder(tmp_path / "clean")
    result = run_cli("check-data", str(clean))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "24 images checked, 0 problem(s)" in result.stdout
    broken = make_image_folder(tmp_path / "broken")
    _break_two_images(broken)
    result = run_cli("check-data", str(broken))
    assert result.returncode == 1
    assert "zero-byte" in result.stdout and "not-an-image" in result.stdout
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(broken)))
    assert run_cli("check-data", str(recipe)).returncode == 1
    missing = run_cli("check-data", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
