"""`transferkit cv RECIPE|FOLDER --folds K`: K-fold cross-validation. Each fold is a run of its own (a variant of
one recipe, `data.kfold.index` its only difference) under one parent folder; the folds share decoded images and
frozen-backbone features; every metric is reported as its mean and standard deviation over the folds."""

from __future__ import annotations

import copy
import csv
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from transferkit.data.folds import FoldAssignment, assign_folds
from transferkit.data.splits import recipe_splits
from transferkit.errors import SpecError, TransferkitError
from transferkit.files import atomic_write_text
from transferkit.run.model_card import write_model_card
from transferkit.rundir import RunDir, RunRoot

if TYPE_CHECKING:
    from rich.console import Console

    from transferkit.recipe.spec import ExperimentSpec
    from transferkit.run.experiment import Experiment

CV_HEADER = ("# written by transferkit cv; `transferkit cv --resume` on its folder continues it, and `transferkit "
             "run` on this file trains the folds again\n")


def fold_name(index: int) -> str:
    """The run (variant) name of fold `index`: fold-1, fold-2, ..."""
    return f"fold-{index}"


def is_data_target(target: str | Path) -> bool:
    """True when `target` is a data folder or a label table (a FOLDER for fit's rules), not a recipe."""
    path = Path(target).expanduser()
    return path.is_dir() or (path.is_file() and path.suffix.lower() in (".csv", ".tsv"))


def base_recipe(target: str, preset: str | None = None, backbone: str | None = None, device: str | None = None,
                seed: int | None = None, overrides: list[str] | tuple[str, ...] = (),
                variant: str | None = None) -> dict:
    """The recipe every fold starts from, resolved: for a FOLDER (or label table), what `fit --preset` writes;
    for a RECIPE, its base run (or `variant`) with every key explicit."""
    from transferkit.run.experiment import Experiment
    from transferkit.run.fit import fit_recipe

    if is_data_target(target):
        if variant:
            raise SpecError(f"--variant {variant}: {target} is a data folder, which has no variants; give a recipe")
        return fit_recipe(target, preset or "balanced", backbone, None, device or "auto", 0 if seed is None else seed,
                          overrides)
    if preset or backbone:
        option = "--preset" if preset else "--backbone"
        raise SpecError(f"{option}: {target} is a recipe, which names its own; change it with --set, or give a data "
                        f"folder to cross-validate with a preset")
    experiment = Experiment.from_yaml(target, list(overrides))
    chosen = variant or experiment.spec.base_variant
    raw = experiment.variant_spec(chosen).model_dump(mode="json", exclude={"variants"})
    if chosen != experiment.spec.base_variant:
        raw["name"] = f"{raw['name']}-{chosen}"
    if not raw["backbone"]["pretrained"]:  # a variant's `pretrained: false` under the base's weights: random init
        raw["backbone"]["weights"] = None
    if device:
        raw["train"]["device"] = device
    if seed is not None:
        raw["seed"] = seed
    return raw


def cv_recipe(base: dict, folds: int, group_regex: str | None = None, group_column: str | None = None) -> dict:
    """`base` as a recipe of `folds` runs, fold-1 .. fold-K, each holding out its part of the training data as
    its validation split (data.kfold); a carved validation split (data.val_split) gives way to the folds."""
    if base["data"].get("kfold"):
        raise SpecError("data.kfold: cv sets it for each fold; remove it from the recipe (or --set), and choose the "
                        "parts with --folds, --group-regex or --group-column")
    raw = copy.deepcopy(base)
    raw["data"]["val_split"] = None
    grouping = {"group_regex": group_regex} if group_regex else {"group_column": group_column} if group_column else {}
    raw["data"]["kfold"] = {"folds": folds, "index": 1, **grouping}
    raw["name"] = f"{raw['name']}-cv{folds}"
    raw["description"] = f"transferkit cv --folds {folds}: {raw.get('description') or raw['name']}"
    raw["base_variant"] = fold_name(1)
    raw["variants"] = {fold_name(i): {"data": {"kfold": {"index": i}}} for i in range(2, folds + 1)}
    return raw


def fold_assignment(spec: ExperimentSpec) -> FoldAssignment:
    """Every training image's group and part, as each fold run of `spec` will read them (DataError before anything
    trains when the parts cannot be made: fewer groups than parts, or a class too small for them)."""
    unfolded = spec.model_copy(update={"data": spec.data.model_copy(update={"kfold": None})})
    return assign_folds(recipe_splits(unfolded), spec.data.kfold, spec.seed, spec.data.labels)


def folds_csv(assignment: FoldAssignment) -> str:
    """folds.csv: each training image's path, target, group and fold."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path", "target", "group", "fold"])
    for (path, target), group, part in zip(assignment.samples, assignment.groups, assignment.parts):
        shown = assignment.classes[target] if isinstance(target, int) else " ".join(f"{v:g}" for v in target)
        writer.writerow([str(path), shown, group.split(":", 1)[1], part])
    return out.getvalue()


@dataclass
class CVResult:
    """The folds' metrics: name -> {mean, std, folds: [value per fold]}, with the runs' folders."""

    root: RunRoot
    metrics: dict[str, dict]
    runs: dict[str, Path]


@dataclass
class CVRun:
    """A cross-validation ready to train: the K-run experiment, its parent folder and the fold assignment."""

    experiment: Experiment
    root: RunRoot
    assignment: FoldAssignment
    resume: bool = False

    @property
    def resume_command(self) -> str:
        """What continues this cross-validation after an interruption."""
        import shlex

        return f"transferkit cv --resume {shlex.quote(str(self.root.path))}"

    def run(self, console: Console | None = None, progress: bool = True, share_caches: bool = True) -> CVResult:
        """Train every fold (images and frozen-backbone features shared between them, unless `share_caches` is
        false: benchmarks/cv_reuse.py measures that), evaluate each fold's best checkpoint on its held-out part,
        write cv.json; a failure before any fold's folder exists leaves no parent folder behind."""
        from rich.console import Console

        from transferkit.data.shared import SharedCaches

        console = console or Console(stderr=True, soft_wrap=True)
        where = {"resume": self.root.path} if self.resume else {"run_root": self.root.path}
        try:
            result = self.experiment.run(console=console, progress=progress,
                                         caches=SharedCaches() if share_caches else None,
                                         resume_command=lambda run_root: self.resume_command, **where)
        except TransferkitError:
            if not self.resume and not any(p.is_dir() for p in self.root.path.iterdir()):
                for file in (self.root.recipe, self.root.folds):
                    file.unlink(missing_ok=True)
                self.root.path.rmdir()
            raise
        return summarize(self.root, {name: v.run_dir for name, v in result.variants.items()}, self.assignment,
                         console, progress)


def start_cv(target: str, folds: int, preset: str | None = None, backbone: str | None = None,
             device: str | None = None, seed: int | None = None, overrides: list[str] | tuple[str, ...] = (),
             output: str | Path = "runs", variant: str | None = None, group_regex: str | None = None,
             group_column: str | None = None) -> CVRun:
    """What `transferkit cv` does before training: the K-fold recipe (validated), its fold assignment (checked),
    a fresh parent folder under `output` with recipe.yaml and folds.csv in it."""
    from transferkit.run.experiment import Experiment

    if group_regex and group_column:
        raise SpecError("--group-regex and --group-column: give one way of grouping")
    raw = cv_recipe(base_recipe(target, preset, backbone, device, seed, overrides, variant), folds, group_regex,
                    group_column)
    raw["output_dir"] = str(output)
    experiment = Experiment.from_dict(raw)
    first = experiment.variant_spec(fold_name(1))
    assignment = fold_assignment(first)
    root = RunRoot.fresh(output, experiment.spec.name)
    atomic_write_text(root.recipe, CV_HEADER + yaml.safe_dump(raw, sort_keys=False))
    atomic_write_text(root.folds, folds_csv(assignment))
    return CVRun(experiment, root, assignment)


def resume_cv(folder: str | Path) -> CVRun:
    """An interrupted `transferkit cv` run folder, ready to continue where it stopped."""
    from transferkit.run.experiment import Experiment

    root = RunRoot(Path(folder).expanduser())
    if not root.recipe.is_file() or not root.folds.is_file():
        raise TransferkitError(f"--resume {folder}: not a `transferkit cv` folder (no recipe.yaml and folds.csv); "
                               f"give the folder an interrupted cv printed")
    experiment = Experiment.from_yaml(root.recipe)
    return CVRun(experiment, root, fold_assignment(experiment.variant_spec(fold_name(1))), resume=True)


def _numbers(metrics: dict, prefix: str) -> dict[str, float]:
    """The headline numbers of an evaluation's metrics.json, prefixed (val_, test_)."""
    found = {f"{prefix}{key}": float(value) for key, value in metrics.items()
             if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "images"}
    if isinstance(metrics.get("macro_avg"), dict):
        found[f"{prefix}macro_f1"] = float(metrics["macro_avg"]["f1"])
    return found


def fold_metrics(run_dir: Path, console: Console, progress: bool) -> dict[str, float]:
    """A fold's best checkpoint on its held-out part (evaluated here) and on the test split (evaluated by the run)."""
    from transferkit.inference.evaluate import evaluate_run_dir

    files = RunDir(run_dir)
    found: dict[str, float] = {}
    for split in ("val", "test"):
        written = files.evaluation_metrics(split)
        if not written.is_file():
            evaluate_run_dir(run_dir, split, console, progress)
        if written.is_file():
            found.update(_numbers(json.loads(written.read_text()), f"{split}_"))
    return found


def aggregate(per_fold: dict[str, dict[str, float]]) -> dict[str, dict]:
    """metric -> {mean, std (sample, n-1; 0 for one fold), folds: [value per fold, None where missing]}."""
    names = list(dict.fromkeys(key for values in per_fold.values() for key in values))
    result = {}
    for name in names:
        values = [per_fold[fold].get(name) for fold in per_fold]
        present = [v for v in values if v is not None]
        result[name] = {"mean": statistics.fmean(present),
                        "std": statistics.stdev(present) if len(present) > 1 else 0.0, "folds": values}
    return result


def summarize(root: RunRoot, runs: dict[str, Path], assignment: FoldAssignment, console: Console,
              progress: bool = False) -> CVResult:
    """Evaluate each fold where it is not yet, and write cv.json: every metric's mean ± std over the folds."""
    per_fold = {name: fold_metrics(path, console, progress) for name, path in runs.items()}
    metrics = aggregate(per_fold)
    groups = len(set(assignment.groups))
    document = {
        "folds": assignment.folds, "images": len(assignment.samples), "groups": groups,
        "selection": "each fold's best.pt (train.best_metric), evaluated on its held-out part (val_*) and on the "
                     "test split (test_*)",
        "std": "sample standard deviation over the folds (n - 1)",
        "metrics": metrics, "runs": {name: str(path) for name, path in runs.items()},
    }
    atomic_write_text(root.cv, json.dumps(document, indent=2))
    for path in runs.values():  # each fold's card gains the spread over the folds
        if RunDir(path).card.is_file():
            write_model_card(path)
    return CVResult(root, metrics, runs)


def table_rows(result: CVResult) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the cv table: metric, mean ± std, then each fold's value."""
    headers = ["metric", "mean ± std", *result.runs]
    rows = [[name, f"{m['mean']:.4f} ± {m['std']:.4f}",
             *("-" if v is None else f"{v:.4f}" for v in m["folds"])] for name, m in result.metrics.items()]
    return headers, rows
