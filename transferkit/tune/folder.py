"""The study folder of `transferkit tune` and the trial folders in it: every file name, and each trial's state
file (`trial.json`), which says how the trial ended even when its process was killed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transferkit.errors import TransferkitError
from transferkit.files import atomic_write_text
from transferkit.rundir import CHECKPOINTS, RunRoot


class TrialFolder:
    """One trial: a normal run folder (its recipe.yaml, the variant's run directory, comparison.json,
    curves.png) plus trial.json (number, state, value, parameters, times) and output.log (what the run printed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.run = RunRoot(self.path)

    recipe = property(lambda self: self.run.recipe, doc="recipe.yaml: the trial's recipe; `transferkit run` repeats it")
    state_file = property(lambda self: self.path / "trial.json", doc="the trial's state, value and parameters")
    log = property(lambda self: self.path / "output.log", doc="what the trial's run printed")

    def state(self) -> dict:
        """trial.json as written last ({} before the trial started)."""
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def record(self, **fields) -> dict:
        """trial.json updated with `fields` (and the time), written atomically; returns it."""
        state = {**self.state(), **fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_text(self.state_file, json.dumps(state, indent=2))
        return state

    def remove_checkpoints(self, reason: str) -> int:
        """Delete the trial's best.pt and last.pt (its metrics and recipe stay), noting why; the bytes freed."""
        freed = 0
        for run_dir in self.run.started().values():
            for name in CHECKPOINTS:
                checkpoint = run_dir / name
                if checkpoint.is_file():
                    freed += checkpoint.stat().st_size
                    checkpoint.unlink()
        if freed and self.state_file.is_file():
            self.record(checkpoints=f"removed: {reason}")
        return freed


class StudyFolder:
    """`--output DIR`: the study's journal (the default storage), the trial folders, the shared caches and the
    report (trials.csv, best-recipe.yaml, history.png, importances.png)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    journal = property(lambda self: self.path / "study.journal", doc="Optuna's journal file: the default storage")
    about = property(lambda self: self.path / "study.json", doc="which study (and storage) this folder belongs to")
    cache = property(lambda self: self.path / "cache", doc="decoded images and features the trials share")
    table = property(lambda self: self.path / "trials.csv", doc="one row per trial: state, value, parameters, time")
    best_recipe = property(lambda self: self.path / "best-recipe.yaml", doc="the best trial's recipe")
    history_png = property(lambda self: self.path / "history.png", doc="Optuna's optimisation history")
    importances_png = property(lambda self: self.path / "importances.png", doc="Optuna's parameter importances")

    def trial(self, number: int) -> TrialFolder:
        """The folder of trial `number`."""
        return TrialFolder(self.path / "trials" / f"trial-{number:04d}")

    def claim(self, study: str, storage: str) -> None:
        """Mark the folder as study `study`'s; TransferkitError when it belongs to another study already."""
        if self.about.is_file():
            held = json.loads(self.about.read_text())
            if held.get("study") != study:
                raise TransferkitError(f"--output {self.path}: that folder holds study '{held.get('study')}' "
                                       f"({held.get('storage')}); give study '{study}' its own --output, or use "
                                       f"--study {held.get('study')}")
            return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.about, json.dumps({"study": study, "storage": storage}, indent=2))
