"""Crash, interrupt and resume: a killed or interrupted run, resumed, ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_image_folder, run_cli, tiny_recipe
from transferkit.callbacks.checkpoint import load_checkpoint

METRICS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A deterministic 3-epoch recipe and its uninterrupted run: (recipe path, run dir)."""
    tmp_path = tmp_path_factory.mktemp("resume")
    root = make_image_folder(tmp_path / "data", per_class=(48, 6))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(root, train={"epochs": 3, "deterministic": True},
                                                 data={"batch_size": 4}, optimizer={"momentum": 0.9})))
    result = run_cli("run", str(recipe), "--output", str(tmp_path / "ref"))
    assert result.returncode == 0, result.stderr
    return recipe, tmp_path / "ref" / "tiny" / "base"


# Runs the CLI with a fault injected at an exact point: a real signal sent to itself at a given
# training step, or a SIGKILL between writing a checkpoint's temp file and renaming it into place.
DRIVER = """
import os, signal, sys
fault, at = sys.argv[1], int(sys.argv[2])
from transferkit.engine.trainer import Trainer
real_to_device, real_replace, steps, saves = Trainer.to_device, os.replace, [0], [0]

def to_device(self, batch):
    if self.model.training:
        steps[0] += 1
        if fault in ("SIGKILL", "SIGINT", "SIGTERM") and steps[0] == at:
            os.kill(os.getpid(), getattr(signal, fault))
    return real_to_device(self, batch)

def replace(src, dst, *args, **kwargs):
    if fault == "checkpoint" and str(dst).endswith("last.pt"):
        saves[0] += 1
        if saves[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)

Trainer.to_device, os.replace = to_device, replace
from transferkit.cli import main
sys.argv = ["transferkit", *sys.argv[3:]]
main()
"""


def _run_with_fault(tmp_path: Path, fault: str, at: int, *args: str) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run([sys.executable, str(driver), fault, str(at), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _final(run_dir: Path):
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [{k: row[k] for k in METRICS} for row in rows], load_checkpoint(run_dir / "last.pt")["model"]


def _assert_same_run(a: Path, b: Path) -> None:
    metrics_a, model_a = _final(a)
    metrics_b, model_b = _final(b)
    assert metrics_a == metrics_b
    assert model_a.keys() == model_b.keys()
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key


STEPS_PER_EPOCH = 24  # 96 training images, batch 4


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, reference):
    recipe, reference_dir = reference
    out = tmp_path / "out"
    killed = _run_with_fault(tmp_path, "SIGKILL", STEPS_PER_EPOCH + 10, "run", str(recipe), "--output", str(out))
    assert killed.returncode == -signal.SIGKILL
    run_dir = out / "tiny" / "base"
    assert len(json.loads((run_dir / "metrics.json").read_text())) == 1
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1

    resumed = run_cli("run", str(recipe), "--output", str(out), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2" in resumed.stderr
    _assert_same_run(reference_dir, run_dir)

    again = run_cli("run", str(recipe), "--output", str(out), "--resume", str(out / "tiny"))
    assert again.returncode == 0 and "finished already" in again.stderr


def test_sigint_saves_mid_epoch_and_resume_continues_exactly(tmp_path, reference):
    recipe, reference_dir = reference
    out = tmp_path / "out"
    stopped = _run_with_fault(tmp_path, "SIGINT", STEPS_PER_EPOCH + 10, "run", str(recipe), "--output", str(out))
    assert stopped.returncode == 130, stopped.stderr
    assert "resume with:" in stopped.stderr and f"--resume {out / 'tiny'}" in stopped.stderr
    saved = load_checkpoint(out / "tiny" / "base" / "last.pt")
    assert saved["epoch"] == 1 and saved["partial"]["step"] == 10

    resumed = run_cli("run", str(recipe), "--output", str(out), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "continues epoch 2 at step 11 of 24" in stopped.stderr
    assert "resuming epoch 2 at step 11 of 24" in resumed.stderr  # the same words as the interrupt's
    _assert_same_run(reference_dir, out / "tiny" / "base")


def test_sigkill_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path, reference):
    recipe, reference_dir = reference
    out = tmp_path / "out"
    killed = _run_with_fault(tmp_path, "checkpoint", 2, "run", str(recipe), "--output", str(out))
    assert killed.returncode == -signal.SIGKILL
    run_dir = out / "tiny" / "base"
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1  # intact, and the previous epoch's
    assert list(run_dir.glob(".last.pt.*.tmp")), "the interrupted write is left as a temp file only"

    resumed = run_cli("run", str(recipe), "--output", str(out), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(reference_dir, run_dir)


def test_a_new_run_never_overwrites_an_earlier_one(tmp_path):
    root = make_image_folder(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(root)))
    for _ in range(2):
        result = run_cli("run", str(recipe), "--output", str(tmp_path / "out"))
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "tiny" / "comparison.json").is_file()
    assert (tmp_path / "out" / "tiny-2" / "comparison.json").is_file()


@pytest.fixture(scope="module")
def featured_reference(tmp_path_factory):
    """freeze schedule + EMA + early stopping + accumulation + one-cycle + a carved validation split, uninterrupted."""
    tmp_path = tmp_path_factory.mktemp("resume-features")
    root = make_image_folder(tmp_path / "data", per_class=(48, 6))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(
        root, data={"batch_size": 4, "val_split": 0.125}, optimizer={"momentum": 0.9},
        lr_policy={"name": "head_multiplier"}, schedule={"name": "onecycle"},
        train={"epochs": 3, "deterministic": True, "freeze_epochs": 1, "ema": {"decay": 0.9},
               "early_stopping": {"patience": 2}, "accumulate_steps": 3, "clip_grad_norm": 5.0})))
    result = run_cli("run", str(recipe), "--output", str(tmp_path / "ref"))
    assert result.returncode == 0, result.stderr
    return recipe, tmp_path / "ref" / "tiny" / "base"


def test_sigkill_mid_epoch_with_every_training_feature_on_resumes_bit_identically(tmp_path, featured_reference):
    recipe, reference_dir = featured_reference
    steps = 21  # 84 training images after the validation split, batch 4
    out = tmp_path / "out"
    killed = _run_with_fault(tmp_path, "SIGKILL", steps + 10, "run", str(recipe), "--output", str(out))
    assert killed.returncode == -signal.SIGKILL
    run_dir = out / "tiny" / "base"
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    resumed = run_cli("run", str(recipe), "--output", str(out), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(reference_dir, run_dir)
    rows = json.loads((run_dir / "metrics.json").read_text())
    reference_rows = json.loads((reference_dir / "metrics.json").read_text())
    for key in ("val_accuracy", "ema_val_accuracy", "ema_test_loss", "lr_backbone", "lr_head"):
        assert [r[key] for r in rows] == [r[key] for r in reference_rows], key
    ema_a = load_checkpoint(run_dir / "last.pt")["callbacks"]["EMA"]["shadow"]
    ema_b = load_checkpoint(reference_dir / "last.pt")["callbacks"]["EMA"]["shadow"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_sigint_with_accumulation_stops_at_an_update_boundary(tmp_path, featured_reference):
    recipe, reference_dir = featured_reference
    out = tmp_path / "out"
    stopped = _run_with_fault(tmp_path, "SIGINT", 21 + 8, "run", str(recipe), "--output", str(out))
    assert stopped.returncode == 130, stopped.stderr
    assert "a resume continues epoch 2 at step 10 of 21" in stopped.stderr
    saved = load_checkpoint(out / "tiny" / "base" / "last.pt")
    assert saved["partial"]["step"] % 3 == 0
    resumed = run_cli("run", str(recipe), "--output", str(out), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(reference_dir, out / "tiny" / "base")


def test_resume_refuses_another_experiments_run_and_a_changed_setting(tmp_path, reference):
    recipe, reference_dir = reference
    other_root = make_image_folder(tmp_path / "other-data")
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tiny_recipe(other_root, name="other")))
    before = (reference_dir.parent / "comparison.json").read_bytes()
    wrong = run_cli("run", str(other), "--resume", str(reference_dir.parent))
    assert wrong.returncode == 2 and "run of experiment 'tiny', not 'other'" in wrong.stderr
    changed = run_cli("run", str(recipe), "--set", "optimizer.lr=0.5", "--resume", str(reference_dir.parent))
    assert changed.returncode == 2
    assert "optimizer.lr: 0.01 in the run, 0.5 in the recipe" in changed.stderr, changed.stderr
    assert (reference_dir.parent / "comparison.json").read_bytes() == before  # nothing overwritten


def test_resume_given_a_variant_folder_continues_its_run(tmp_path, reference):
    recipe, reference_dir = reference
    again = run_cli("run", str(recipe), "--resume", str(reference_dir))  # runs/tiny/base: the folder with last.pt
    assert again.returncode == 0, again.stderr
    assert "finished already" in again.stderr
    assert not (reference_dir / "tiny").exists() and not (reference_dir / "base").exists()


def test_a_setting_newer_than_the_run_left_off_does_not_block_resuming():
    from transferkit.rundir import differences

    saved = {"train": {"epochs": 3, "label_smoothing": 0.1}}
    assert differences(saved, {"train": {"epochs": 5, "label_smoothing": 0.1, "freeze_bn_stats": False}}) == []
    assert differences(saved, {"train": {"epochs": 3, "label_smoothing": 0.1, "freeze_bn_stats": True}}) == [
        "train.freeze_bn_stats: None in the run, True in the recipe"]
