"""Callbacks and loggers are registries: a plugin adds both in one file and a CLI run uses them; the recipe's
names and options are checked when it is read; Python callbacks join a run in the connector's order."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from conftest import REPO, run_cli, tiny_recipe
from transferkit import Experiment
from transferkit.callbacks.checkpoint import load_checkpoint
from transferkit.engine.callbacks import Callback
from transferkit.errors import SpecError

PLUGIN_DIR = REPO / "tests" / "plugins"
QUIET = Console(quiet=True)


def _plugin_env(tmp_path: Path) -> dict:
    """An environment where tests/plugins/tk_probe_plugin.py is an installed plugin (a dist-info on the path)."""
    site = tmp_path / "site"
    info = site / "tk_probe_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tk_probe_plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[transferkit.plugins]\nprobe = tk_probe_plugin\n")
    path = os.pathsep.join([str(site), str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "0"}


def _write_recipe(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_plugin_adds_a_callback_and_a_logger_that_a_cli_run_uses(image_root, tmp_path):
    env = _plugin_env(tmp_path)
    listed = run_cli("list-callbacks", env=env)
    assert "weight_norm" in listed.stdout and "L2 norm of the model's weights" in listed.stdout
    assert "jsonlines" in run_cli("list-loggers", env=env).stdout
    assert "callbacks: weight_norm; loggers: jsonlines" in run_cli("plugins", env=env).stdout

    recipe = _write_recipe(tmp_path, tiny_recipe(image_root, train={
        "epochs": 2, "callbacks": [{"name": "weight_norm", "options": {"metric": "wnorm"}}],
        "loggers": ["csv", {"name": "jsonlines", "options": {"filename": "log.jsonl"}}]}))
    result = run_cli("run", str(recipe), "--output", str(tmp_path / "runs"), "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "tiny" / "base"
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["step"] for e in epochs] == [1, 2]
    assert epochs[0]["wnorm"] > 0 and epochs[0]["wnorm"] != epochs[1]["wnorm"]  # the weights trained
    assert events[-1]["event"] == "run_end"  # after the evaluation: its files are there
    assert "evaluation/test/confusion_matrix.png" in events[-1]["files"]
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "wnorm" in header  # the loggers run after the callbacks and see what they added
    assert load_checkpoint(run_dir / "last.pt")["callbacks"]["WeightNorm"] == {"epochs_seen": 2}


@pytest.mark.parametrize("train, parts", [
    ({"callbacks": ["weight_nrom"]}, ["train.callbacks[0]: unknown callback 'weight_nrom'",
                                      "did you mean: weight_norm?", "list-callbacks"]),
    ({"callbacks": [{"name": "weight_norm", "options": {"metric": 3}}]},
     ["train.callbacks[0].options.metric", "callback 'weight_norm' options"]),
    ({"callbacks": [{"name": "weight_norm", "options": {"colour": "red"}}]},
     ["train.callbacks[0].options.colour", "callback 'weight_norm' options"]),
    ({"loggers": ["csv", "jsonline"]}, ["train.loggers[1]: unknown logger 'jsonline'", "did you mean: jsonlines?"]),
    ({"loggers": [{"name": "csv", "options": {"every": 2}}]}, ["train.loggers[0].options.every",
                                                               "logger 'csv' takes no options"]),
])
def test_unknown_names_and_bad_options_are_refused_when_the_recipe_is_read(image_root, tmp_path, train, parts):
    recipe = _write_recipe(tmp_path, tiny_recipe(image_root, train=train))
    result = run_cli("validate", str(recipe), env=_plugin_env(tmp_path))
    assert result.returncode == 2, result.stderr
    line = " ".join(result.stderr.split())
    assert "Traceback" not in line and f"{recipe} line" in line
    for part in parts:
        assert part in line, (part, line)


def test_a_logger_whose_extra_is_missing_is_refused_in_one_line(image_root, tmp_path):
    recipe = _write_recipe(tmp_path, tiny_recipe(image_root, train={"loggers": ["csv", "mlflow"]}))
    blocked = ("import sys; sys.modules['mlflow'] = None; sys.argv = ['transferkit', 'validate', sys.argv[1]]; "
               "from transferkit.cli import main; main()")  # None in sys.modules: `import mlflow` fails here
    import subprocess
    result = subprocess.run([sys.executable, "-c", blocked, str(recipe)], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "300"}, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "train.loggers[1]: mlflow needs the mlflow package" in lines[0]
    assert 'pip install "transferkit[mlflow]"' in lines[0]


class Recorder(Callback):
    """Notes each epoch and the order of the trainer's callbacks; keeps the epochs as state."""

    def __init__(self):
        self.epochs, self.order = [], []

    def on_epoch_end(self, trainer, epoch, row):
        self.epochs.append(epoch)
        self.order = [type(cb).__name__ for cb in trainer.callbacks]

    def state_dict(self):
        return {"epochs": list(self.epochs)}

    def load_state_dict(self, state):
        self.epochs = list(state["epochs"])


def test_python_callbacks_join_the_run_between_the_features_and_the_checkpoint(image_root, tmp_path):
    raw = tiny_recipe(image_root, output_dir=str(tmp_path / "runs"),
                      train={"epochs": 2, "ema": {"decay": 0.9}, "early_stopping": {"patience": 5}})
    recorder = Recorder()
    result = Experiment.from_dict(raw).run(progress=False, console=QUIET, callbacks=[recorder])["base"]
    assert recorder.epochs == [1, 2]
    assert recorder.order == ["EMA", "BestTracker", "EarlyStopping", "BadImageReport", "RunClock", "Recorder",
                              "EpochLine", "MetricsFiles", "Checkpoint"]
    assert load_checkpoint(result.run_dir / "last.pt")["callbacks"]["Recorder"] == {"epochs": [1, 2]}


def test_two_callbacks_keeping_state_under_one_key_are_refused(image_root, tmp_path):
    raw = tiny_recipe(image_root, output_dir=str(tmp_path / "runs"))
    with pytest.raises(SpecError, match="Recorder and Recorder both keep state under 'Recorder'"):
        Experiment.from_dict(raw).run(progress=False, console=QUIET, callbacks=[Recorder(), Recorder()])
    assert not (tmp_path / "runs" / "tiny" / "base" / "last.pt").exists()
