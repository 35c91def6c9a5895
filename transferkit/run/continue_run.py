"""`transferkit continue RUN`: more epochs from a finished run's best.pt or last.pt, with a new optimizer and
schedule, into a new run folder that names its parent.

`--resume` finishes exactly what a run started; this starts a new run from where a finished one ended. The new
recipe is the parent's resolved one (its spec.yaml) with `train.init_from` pointing at the checkpoint, the number
of epochs asked for, and no linear probe, frozen epochs or budget (the head is trained already); `--set` changes
anything else. The new run's recipe.yaml, spec.yaml and summary.json (`parent`) name the checkpoint it came from.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from transferkit.errors import TransferkitError
from transferkit.files import atomic_write_text
from transferkit.recipe.yaml_io import dump_yaml
from transferkit.rundir import RunDir, RunRoot
from transferkit.run.fit import FitRun

HEADER = "# written by transferkit continue from {parent}; `transferkit run` on this file repeats the run\n"
STARTS = ("best", "last")


def parent_variant(run: str | Path) -> RunDir:
    """The variant folder RUN names: a variant folder, or a run folder holding one variant."""
    path = Path(run).expanduser()
    if RunDir(path).is_started:
        return RunDir(path)
    started = RunRoot(path).started()
    if len(started) == 1:
        return next(iter(started.values()))
    if not started:
        raise TransferkitError(f"{run}: no run here; give a folder `transferkit run` or `fit` wrote "
                               f"(runs/<name>/<variant>)")
    raise TransferkitError(f"{run}: holds the variants {', '.join(started)}; give one, e.g. transferkit continue "
                           f"{path / next(iter(started))}")


def continued_recipe(parent: RunDir, checkpoint: Path, epochs: int | None = None) -> dict:
    """The parent's resolved recipe made to start from `checkpoint` for `epochs` (default: as many as it ran)."""
    raw = yaml.safe_load(parent.spec.read_text())
    raw.pop("variants", None)
    raw["base_variant"] = parent.path.name  # the new run's folder is named as the parent's
    train = raw.setdefault("train", {})
    raw["description"] = f"{parent.path}: continued from {checkpoint.name}"
    raw["train"] = {**train, "epochs": epochs or train.get("epochs", 1), "init_from": str(checkpoint.resolve()),
                    "probe_epochs": 0, "freeze_epochs": 0, "budget": None}
    return raw


def start_continue(run: str | Path, epochs: int | None = None, overrides: list[str] | tuple[str, ...] = (),
                   start: str = "best", output: str | Path | None = None) -> FitRun:
    """What `transferkit continue` does before training: the parent's checkpoint found, the new recipe validated,
    a fresh run folder `<output>/<name>-continued[-N]` (output: where the parent's run folder is) and the recipe
    written into it. Refused for a run that has not finished (`--resume` finishes it)."""
    from transferkit.run.experiment import Experiment

    if start not in STARTS:
        raise TransferkitError(f"--from {start}: use best (the selected weights) or last (the last epoch's)")
    if epochs is not None and epochs < 1:
        raise TransferkitError(f"--epochs {epochs}: give 1 or more")
    parent = parent_variant(run)
    if not parent.is_finished:
        raise TransferkitError(f"{parent.path}: this run has not finished; --resume finishes what it started "
                               f"(transferkit run RECIPE --resume {parent.path.parent}), then continue it")
    checkpoint = parent.best if start == "best" else parent.last
    if not checkpoint.is_file():
        other = "last" if start == "best" else "best"
        raise TransferkitError(f"{checkpoint}: not there (train.keep kept the other one); use --from {other}")
    raw = continued_recipe(parent, checkpoint, epochs)
    output = Path(output) if output is not None else parent.path.parent.parent
    raw["output_dir"] = str(output)
    experiment = Experiment.from_dict(raw, list(overrides))
    root = RunRoot.fresh(output, f"{experiment.spec.name}-continued")
    text = HEADER.format(parent=checkpoint) + dump_yaml(experiment.spec.model_copy(update={"variants": {}}))
    atomic_write_text(root.recipe, text)
    return FitRun(experiment, root, text)
