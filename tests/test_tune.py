"""`transferkit tune` on real Optuna studies over tiny folders: the report and its best recipe, pruning of a bad
trial, SIGKILL mid-trial then two processes continuing the one journal-file study, and spaces refused when read."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_image_folder, run_cli

optuna = pytest.importorskip("optuna")

# A linear probe on the cached features of timm's untrained test_resnet (373k parameters) at 32 px: each trial
# trains in a fraction of a second and writes checkpoints of 1.5 MB.
RECIPE = {
    "name": "tiny",
    "seed": 0,
    "backbone": {"name": "timm/test_resnet", "pretrained": False},
    "data": {"root": "data", "image_size": 32, "batch_size": 8, "num_workers": 0, "val_split": 0.25},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.0},
    "lr_policy": {"name": "frozen_backbone"},
    "train": {"epochs": 3, "device": "cpu"},
    "tune": {"metric": "val_loss", "pruner_startup_trials": 2,
             "space": {"optimizer.lr": {"low": 0.01, "high": 0.2, "log": True},
                       "train.label_smoothing": [0.0, 0.1]}},
}
STATES = {"COMPLETE", "PRUNED"}


def _folder(tmp: Path, name: str, recipe: dict = RECIPE) -> Path:
    folder = tmp / name
    make_image_folder(folder / "data", per_class=(8, 2))
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return folder


def _trials(study_folder: Path, name: str = "tiny") -> list:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(study_folder / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 4-trial study over two keys: two good points and a huge learning rate enqueued first (as a user would
    with Optuna's enqueue_trial), then one point TPE samples; only the best trial keeps its checkpoints."""
    folder = _folder(tmp_path_factory.mktemp("tune"), "one")
    (folder / "runs" / "tiny-tune").mkdir(parents=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(folder / "runs" / "tiny-tune" / "study.journal")))
    enqueued = optuna.create_study(study_name="tiny", storage=storage, direction="minimize")
    for lr in (0.05, 0.1, 50.0):
        enqueued.enqueue_trial({"optimizer.lr": lr, "train.label_smoothing": 0.0}, skip_if_exists=False)
    result = run_cli("tune", "recipe.yaml", "--trials", "4", "--keep-best", "1", "--no-progress", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder, folder / "runs" / "tiny-tune", result


def test_a_study_writes_its_report_and_run_repeats_the_best_trial(study):
    folder, out, result = study
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(row["number"]) for row in rows] == [0, 1, 2, 3]
    assert {row["state"] for row in rows} <= STATES and all(row["val_loss"] for row in rows)
    assert all(row["optimizer.lr"] and row["train.label_smoothing"] for row in rows)
    assert "tiny: 4 trials:" in result.stdout and "best: trial" in result.stdout
    for png in ("history.png", "importances.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    complete = [row for row in rows if row["state"] == "COMPLETE"]
    best = min(complete, key=lambda row: float(row["val_loss"]))
    trial_dir = out / "trials" / f"trial-{int(best['number']):04d}"
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"trial-000{i}" for i in range(4)]
    with_checkpoints = [p.parent.parent.name for p in (out / "trials").glob("*/base/best.pt")]
    assert with_checkpoints == [trial_dir.name]  # --keep-best 1
    # the trials share one decoded-image cache and one feature file per split (train, val, test)
    assert len(list((out / "cache" / "features").glob("*.pt"))) == 3
    assert len(list((out / "cache" / "decoded").glob("*/pixels.u8"))) == 1
    assert "reused from an earlier run" in (out / "trials" / "trial-0003" / "output.log").read_text()
    best_recipe = yaml.safe_load((out / "best-recipe.yaml").read_text())
    assert "tune" not in best_recipe and best_recipe["optimizer"]["lr"] == pytest.approx(float(best["optimizer.lr"]))
    assert best_recipe == yaml.safe_load((trial_dir / "recipe.yaml").read_text())
    again = run_cli("run", str(out / "best-recipe.yaml"), "--output", str(folder / "again"), "--no-progress",
                    cwd=folder)
    assert again.returncode == 0, again.stderr
    history = json.loads(next((folder / "again").glob("*/base/metrics.json")).read_text())
    assert min(row["val_loss"] for row in history) == pytest.approx(float(best["val_loss"]), rel=1e-5, abs=1e-7)


def test_a_huge_learning_rate_is_pruned_at_the_first_epoch(study):
    _, out, _ = study
    bad = next(t for t in _trials(out) if t.params["optimizer.lr"] == 50.0)
    assert bad.state.name == "PRUNED" and bad.last_step == 1
    folder = out / "trials" / f"trial-{bad.number:04d}"
    assert json.loads((folder / "trial.json").read_text())["state"] == "PRUNED"
    summary = json.loads((folder / "base" / "summary.json").read_text())
    assert summary["epochs"] == 1 and "pruned by Optuna's median pruner after epoch 1 of 3" in summary["stop_reason"]
    good = [t for t in _trials(out) if t.params["optimizer.lr"] in (0.05, 0.1)]
    assert [t.state.name for t in good] == ["COMPLETE", "COMPLETE"] and all(t.last_step == 3 for t in good)


# Sends the tune process SIGKILL at its Nth training step (counted over its trials), as a crash or OOM kill would.
KILLER = """
import os, signal, sys
from transferkit.engine.trainer import Trainer
real, steps, at = Trainer.to_device, [0], int(sys.argv[1])

def to_device(self, batch):
    if self.model.training:
        steps[0] += 1
        if steps[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, batch)

Trainer.to_device = to_device
from transferkit.cli import main
sys.argv = ["transferkit", *sys.argv[2:]]
main()
"""


def test_sigkill_mid_trial_then_two_processes_continue_the_study(tmp_path):
    folder = _folder(tmp_path, "kill")
    (folder / "killer.py").write_text(KILLER)
    env = {**os.environ, "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    args = ["tune", "recipe.yaml", "--trials", "4", "--no-progress"]
    # 12 training images in batches of 8: 2 steps an epoch, 6 a trial; step 9 is in trial 1's second epoch
    killed = subprocess.run([sys.executable, "killer.py", "9", *args], cwd=folder, env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    out = folder / "runs" / "tiny-tune"
    assert [t.state.name for t in _trials(out)] == ["COMPLETE", "RUNNING"]
    # the same command in two processes at once: the killed trial is failed, and together they run the 3 missing
    processes = [subprocess.Popen([sys.executable, "-m", "transferkit.cli", *args], cwd=folder, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err for _, err in outputs]
    assert sum("trial 1: failed: its process" in err for _, err in outputs) == 1
    assert sum(int(err.rpartition("tune: ")[2].split()[0]) for _, err in outputs) == 3
    trials = _trials(out)
    assert [t.number for t in trials] == [0, 1, 2, 3, 4] and [t.state.name for t in trials][:2] == ["COMPLETE", "FAIL"]
    assert {t.state.name for t in trials[2:]} <= STATES  # the study holds 4 trials besides the failed one
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"trial-000{i}" for i in range(5)]
    note = json.loads((out / "trials" / "trial-0001" / "trial.json").read_text())
    assert note["state"] == "FAIL" and "ended without finishing it (killed or crashed)" in note["reason"]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert rows[1]["state"] == "FAIL" and "killed" in rows[1]["note"]


@pytest.mark.parametrize("space, line, message", [
    ("    optimizer.lrr: {low: 1.0e-4, high: 1.0e-1}\n", 6,
     "tune.space.optimizer.lrr: unknown recipe key optimizer.lrr (did you mean: optimizer.lr?)"),
    ("    train.label_smoothing: [0.0, 0.1]\n    optimizer.lr: {low: 0.1, high: 1.0e-4, log: true}\n", 7,
     "tune.space.optimizer.lr: low 0.1 is above high 0.0001; swap them"),
    ("    train.epochs: [2, many]\n", 6, "tune.space.train.epochs: choice 'many' is not a value train.epochs takes"),
    ("    train.label_smoothing: {low: 0.0, high: 1.5}\n", 6,
     "tune.space.train.label_smoothing: high 1.5 is not a value train.label_smoothing takes"),
    ("    train.epochs: {low: 1, high: 2.5}\n", 6,
     "tune.space.train.epochs: train.epochs takes whole numbers, and high is 2.5"),
    ("    optimizer.lr: {low: 1.0e-4, high: 1.0e-1}\n  metric: test_accuracy\n", 7,
     "tune.metric: the search must not select on the test split"),
])
def test_an_unsound_space_is_refused_when_read_naming_its_line(tmp_path, space, line, message):
    from transferkit.errors import SpecError
    from transferkit.recipe.load import parse_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: t\ndata: {{root: data}}\ntrain: {{epochs: 3}}\ntune:\n  space:\n{space}")
    with pytest.raises(SpecError) as refused:
        parse_recipe(recipe)
    assert str(refused.value).startswith(f"{recipe} line {line}: {message}")
