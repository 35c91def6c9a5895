"""One trial: its point of the space written as the trial folder's recipe.yaml, run as `transferkit run` runs a
recipe (the pruning callback added, what it prints kept in output.log), and valued by the best of the metric
over its epochs, as best.pt was chosen."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import yaml
from rich.console import Console

from transferkit.errors import TransferkitError
from transferkit.files import atomic_write_text
from transferkit.recipe.spec import SearchParam
from transferkit.signals import RunInterrupted
from transferkit.tune.folder import StudyFolder, TrialFolder
from transferkit.tune.liveness import this_worker
from transferkit.tune.pruning import PruneOnMetric, epoch_value
from transferkit.tune.space import describe, point_recipe, suggest

TRIAL_HEADER = "# trial {number} of transferkit tune study '{study}'; `transferkit run` on this file repeats it\n"


class TrialFailed(Exception):
    """The trial could not run to its end (its own recipe or settings failed); the study goes on without it."""


class TrialInterrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped the trial; the worker stops after marking it failed."""


@dataclass
class Trials:
    """What every trial of one study shares: the base recipe, the space, the objective and where trials go."""

    study: str
    base: dict  # the recipe as read (paths absolute, --set applied)
    space: dict[str, SearchParam]
    metric: str  # the resolved objective, e.g. val_accuracy
    better: str  # "max" or "min"
    pruner: str
    folder: StudyFolder
    device: str | None = None

    def recipe_yaml(self, params: dict[str, Any]) -> str:
        """The YAML of the recipe at the point `params`: the base recipe with their values."""
        return yaml.safe_dump(point_recipe(self.base, params), sort_keys=False)

    def run(self, trial, console: Console) -> float:
        """Run Optuna trial `trial` (its user attribute `worker` set already: see tune/liveness.py); its value.
        optuna.TrialPruned when the pruner stopped it, TrialFailed when it failed, TrialInterrupted on Ctrl-C;
        trial.json says which in every case."""
        import optuna

        from transferkit.run.experiment import Experiment

        params = suggest(trial, self.space)
        folder = self.folder.trial(trial.number)
        folder.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder.recipe, TRIAL_HEADER.format(number=trial.number, study=self.study)
                          + self.recipe_yaml(params))
        folder.record(number=trial.number, study=self.study, state="RUNNING", params=params, metric=self.metric,
                      worker=this_worker(), started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        console.print(f"trial {trial.number}: {describe(params)}", highlight=False, soft_wrap=True)
        pruning = PruneOnMetric(trial, self.metric, self.better, self.pruner)
        started = time.monotonic()
        try:
            with open(folder.log, "w", encoding="utf-8") as log:
                quiet = Console(file=log, soft_wrap=True, no_color=True, width=160)
                result = Experiment.from_yaml(folder.recipe).run(
                    run_root=folder.path, console=quiet, progress=False, callbacks=[pruning], device=self.device,
                    test_report=False)
        except RunInterrupted:
            self._ended(console, folder, trial.number, "FAIL", reason="interrupted (Ctrl-C or SIGTERM)")
            raise TrialInterrupted() from None
        except Exception as exc:  # a trial's own failure (a recipe this point makes invalid, memory, ...)
            reason = str(exc) if isinstance(exc, TransferkitError) else f"{type(exc).__name__}: {exc}"
            self._ended(console, folder, trial.number, "FAIL", reason=" ".join(reason.split()))
            raise TrialFailed(reason) from exc
        seconds = time.monotonic() - started
        history = next(iter(result.variants.values())).history
        values = [v for v in (epoch_value(row, self.metric, self.better) for row in history) if v is not None]
        if not values:
            reason = f"its run reports no {self.metric} (epoch metrics: {', '.join(history[0]) if history else '-'})"
            self._ended(console, folder, trial.number, "FAIL", reason=reason)
            raise TrialFailed(reason)
        if pruning.pruned_at is not None:
            self._ended(console, folder, trial.number, "PRUNED", value=pruning.value, epochs=len(history),
                        seconds=seconds, reason=f"pruned after epoch {pruning.pruned_at}")
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
        value = min(values) if self.better == "min" else max(values)
        self._ended(console, folder, trial.number, "COMPLETE", value=value, epochs=len(history), seconds=seconds)
        return value

    def _ended(self, console: Console, folder: TrialFolder, number: int, state: str, value: float | None = None,
               epochs: int | None = None, seconds: float | None = None, reason: str | None = None) -> None:
        """trial.json and the console line of a trial that ended in `state`."""
        folder.record(state=state, value=value, epochs=epochs, seconds=seconds, reason=reason,
                      ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
        if state == "FAIL":
            line = f"failed: {reason}"
        else:
            took = f", {epochs} epoch(s) in {seconds:.0f}s" if seconds is not None else ""
            line = f"{self.metric} {value:.4f} ({'complete' if state == 'COMPLETE' else reason}{took})"
        console.print(f"trial {number}: {line}", highlight=False, soft_wrap=True)
