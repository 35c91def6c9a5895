"""The `transferkit` command: thin Typer commands over the Python API."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.console import Console
from rich.text import Text

from transferkit.cpu_memory import preload
from transferkit.errors import TransferkitError
from transferkit.signals import RunInterrupted

app = typer.Typer(add_completion=True, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Transfer learning for image classification from one validated YAML recipe.")
# soft_wrap: a line longer than the width stays one line (the terminal wraps it; a log file keeps it whole)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}


def _flag_type(self, ctx):
    """Help shows no type for flags (typer's default prints `<bool>` after every flag, --help included)."""
    return None if self.is_flag else _typer_option_type(self, ctx)


_typer_option_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_type


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"transferkit {version('transferkit')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show full tracebacks for errors"),
             version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="print the version and exit")) -> None:
    _state["debug"] = debug


def _api():
    import transferkit  # registers the built-ins

    transferkit.load_plugins()
    return transferkit


def _complete_recipe(incomplete: str) -> list[str]:
    """Shell completion for RECIPE: registered recipe names and YAML files under the working directory."""
    names = list(_api().RECIPES.list(f"{incomplete}*"))
    folder = Path(incomplete).parent if incomplete else Path(".")
    if folder.is_dir():
        names += sorted(str(p) for p in folder.glob("*") if str(p).startswith(incomplete.removeprefix("./"))
                        and (p.is_dir() or p.suffix in (".yaml", ".yml")))
    return names


def _complete_source(incomplete: str) -> list[str]:
    return [s for s in ("torchvision", "timm", "registered") if s.startswith(incomplete)]


@app.command()
def run(recipe: str = typer.Argument(..., metavar="RECIPE", autocompletion=_complete_recipe, help="recipe YAML file, or a plugin's recipe name"),
        set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override a recipe value, e.g. --set train.epochs=3 (repeatable)"),
        device: Optional[str] = typer.Option(None, "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps"),
        output: Optional[Path] = typer.Option(None, "--output", metavar="DIR", help="root folder for run directories"),
        variant: list[str] = typer.Option([], "--variant", metavar="NAME", help="run only these variants (repeatable)"),
        resume: Optional[str] = typer.Option(None, "--resume", metavar="DIR|auto", help="run directory to continue, or 'auto'"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
        nproc: Optional[int] = typer.Option(None, "--nproc", metavar="N", help="data-parallel processes on this "
                                            "machine, started through torchrun (data.batch_size stays the global batch)")) -> None:
    """Train every variant of a recipe and compare them."""
    from transferkit.run.launch import resume_command, run_words, worker_words

    api = _api()
    experiment = api.Experiment.from_yaml(recipe, set_)
    words = run_words(recipe, set_, variant, device)
    if nproc is not None:
        _launch(experiment, nproc, worker_words(words, output, resume, progress))
    try:
        experiment.run(variants=variant or None, output_dir=output, device=device, console=err, progress=progress,
                       resume=resume, resume_command=lambda run_root: resume_command(words, run_root))
    except RunInterrupted as stop:
        if _rank() == 0:
            err.print(f"interrupted: {stop.what_resume_does()}; resume with:\n  {resume_command(words, stop.run_root)}",
                      markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _launch(experiment, nproc: int, args: list[str]) -> None:
    """Run the same command in `nproc` processes under torchrun (the batch checked first); exits."""
    from transferkit.run.launch import check_processes, launch

    check_processes(experiment, nproc)
    code = launch(nproc, args, lambda line: err.print(Text.assemble(("error: ", "bold red"), line),
                                                      highlight=False, soft_wrap=True))
    raise typer.Exit(code)


@app.command()
def validate(recipe: str = typer.Argument(..., metavar="RECIPE", autocompletion=_complete_recipe, help="recipe YAML file, or a plugin's recipe name"),
             set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override a recipe value (repeatable)"),
             variant: list[str] = typer.Option([], "--variant", metavar="NAME", help="print only these runs (repeatable)"),
             diff: bool = typer.Option(False, "--diff", help="print the base in full and each variant as the settings "
                                                              "it changes")) -> None:
    """Check a recipe and print it resolved, each variant expanded in full (or, with --diff, as its changes)."""
    from transferkit.recipe.variants import changed_settings, variant_names, variant_of

    spec = _api().load_recipe(recipe, set_)  # every phase of run/validation.py, as `run` checks it
    resolved = {name: variant_of(spec, name).model_dump(mode="json", exclude={"variants"})
                for name in variant_names(spec)}
    shown = variant or list(resolved)
    for name in shown:
        variant_of(spec, name)  # an unknown --variant: refused with the names there are
    if diff:
        base = resolved[spec.base_variant]
        out.print(yaml.safe_dump({spec.base_variant: base}, sort_keys=False), end="", markup=False, highlight=False,
                  soft_wrap=True)
        for name in (n for n in shown if n != spec.base_variant):
            changes = changed_settings(base, resolved[name])
            out.print(f"{name}: {len(changes)} setting(s) changed from {spec.base_variant}", markup=False,
                      highlight=False)
            for line in changes:
                out.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    else:
        out.print(yaml.safe_dump({name: resolved[name] for name in shown}, sort_keys=False), end="", markup=False,
                  highlight=False, soft_wrap=True)
    err.print(f"[green]recipe is valid[/]: {len(resolved)} run(s): {', '.join(resolved)}")


@app.command()
def fit(folder: str = typer.Argument(..., help="folder of photos: train/ and test/ class folders (val/ optional), or one folder per class; or a label table (.csv) with --set task=multi_label|regression"),
        preset: str = typer.Option("balanced", "--preset", help="fast, balanced or best (docs/presets.md)"),
        budget: Optional[str] = typer.Option(None, "--budget", help="wall-time budget, e.g. 10m: epochs are fitted to it"),
        backbone: Optional[str] = typer.Option(None, "--backbone", help="backbone name (default: EfficientNet-Lite0, offline weights)"),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps"),
        seed: int = typer.Option(0, "--seed", help="random seed"),
        set_: list[str] = typer.Option([], "--set", help="override a value of the generated recipe"),
        output: Path = typer.Option(Path("runs"), "--output", help="root folder for run directories"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars")) -> None:
    """Train a classifier on a folder of photos with no recipe: a preset's rules write one, then it runs."""
    _api()
    from transferkit.run.fit import start_fit

    started = start_fit(folder, preset, backbone, budget, device, seed, set_, output)
    err.print(f"fit: --preset {preset} on {folder}; the resolved recipe ({started.root.recipe}):", highlight=False)
    out.print(started.recipe_text, end="", markup=False, highlight=False, soft_wrap=True)
    _train_written(started, progress)


def _train_written(started, progress: bool) -> None:
    """Train a run whose recipe transferkit wrote (fit, continue); Ctrl-C prints how to resume it and exits 130."""
    try:
        started.run(console=err, progress=progress)
    except RunInterrupted as stop:
        err.print(f"interrupted: {stop.what_resume_does()}; resume with:\n  {started.resume_command}",
                  markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    err.print(f"repeat with: transferkit run {shlex.quote(str(started.root.recipe))}", highlight=False, soft_wrap=True)


@app.command("continue")
def continue_(run_dir: str = typer.Argument(..., metavar="RUN", help="a finished run's folder (runs/<name>/<variant>, or runs/<name> with one variant)"),
              epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="epochs of the new run (default: as many as the parent ran)"),
              set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override a value of the parent's recipe, e.g. --set optimizer.lr=1e-4 (repeatable)"),
              start: str = typer.Option("best", "--from", metavar="best|last", help="start from best.pt (the selected weights) or last.pt (the last epoch's)"),
              output: Optional[Path] = typer.Option(None, "--output", metavar="DIR", help="root folder for the new run (default: beside the parent's run folder)"),
              progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars")) -> None:
    """Train more epochs from a finished run's best.pt or last.pt, with a new schedule, into a new run folder."""
    _api()
    from transferkit.run.continue_run import start_continue

    started = start_continue(run_dir, epochs, set_, start, output)
    spec = started.experiment.spec
    err.print(f"continue: {spec.train.epochs} more epoch(s) from {spec.train.init_from} into "
              f"{started.root.path / spec.base_variant} (recipe: {started.root.recipe})", highlight=False,
              soft_wrap=True)
    _train_written(started, progress)


@app.command()
def cv(target: Optional[str] = typer.Argument(None, metavar="RECIPE|FOLDER", autocompletion=_complete_recipe,
                                              help="recipe (its base run, or --variant), or a data folder or label "
                                                   "table run with a preset's rules as `fit` does"),
       folds: int = typer.Option(5, "--folds", min=2, max=100, help="K: parts of the training data, one run each"),
       group_regex: Optional[str] = typer.Option(None, "--group-regex", metavar="REGEX", help="file names with the "
                                                 "same match (its first group) stay in one part, e.g. '^(.+)_\\d+'"),
       group_column: Optional[str] = typer.Option(None, "--group-column", metavar="COLUMN",
                                                  help="label-table column naming each image's group"),
       preset: Optional[str] = typer.Option(None, "--preset", help="FOLDER: fast, balanced (default) or best"),
       backbone: Optional[str] = typer.Option(None, "--backbone", help="FOLDER: backbone name (default: "
                                                                       "EfficientNet-Lite0, offline weights)"),
       variant: Optional[str] = typer.Option(None, "--variant", metavar="NAME", help="RECIPE: which run to "
                                                                                    "cross-validate (default: the base)"),
       set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override a recipe value (repeatable)"),
       device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps"),
       seed: Optional[int] = typer.Option(None, "--seed", help="random seed (the parts and the training)"),
       output: Path = typer.Option(Path("runs"), "--output", help="root folder for run directories"),
       resume: Optional[Path] = typer.Option(None, "--resume", metavar="DIR", help="continue an interrupted cv"),
       progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars")) -> None:
    """K-fold cross-validation: one run per fold under one folder; every metric as mean ± std (table and cv.json)."""
    _api()
    from transferkit.run.cv import resume_cv, start_cv, table_rows
    from transferkit.tables import print_table

    if (target is None) == (resume is None):
        raise TransferkitError("cv: give a RECIPE or FOLDER to cross-validate, or --resume DIR to continue one")
    if resume is not None:
        started = resume_cv(resume)
    else:
        started = start_cv(target, folds, preset, backbone, device, seed, set_, output, variant, group_regex,
                           group_column)
    assignment = started.assignment
    err.print(f"cv: {assignment.folds} folds of {len(assignment.samples)} training images in "
              f"{len(set(assignment.groups))} groups -> {started.root.path} (recipe.yaml, folds.csv)",
              highlight=False, soft_wrap=True)
    try:
        result = started.run(console=err, progress=progress)
    except RunInterrupted as stop:
        err.print(f"interrupted: {stop.what_resume_does()}; resume with:\n  {started.resume_command}",
                  markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    headers, rows = table_rows(result)
    print_table(out, headers, rows, title=f"{assignment.folds}-fold cross-validation ({started.root.path})",
                right=set(range(1, len(headers))))
    err.print(f"wrote {started.root.cv}", highlight=False, soft_wrap=True)


@app.command()
def tune(recipe: str = typer.Argument(..., metavar="RECIPE", autocompletion=_complete_recipe, help="recipe YAML file with a tune: section (docs/tuning.md)"),
         trials: int = typer.Option(..., "--trials", min=1, metavar="N", help="trials the study should hold (complete, pruned or running); a re-run continues up to N"),
         timeout: Optional[str] = typer.Option(None, "--timeout", metavar="DURATION", help="start no new trial after this long, e.g. 30m or 2h"),
         storage: Optional[str] = typer.Option(None, "--storage", metavar="URL|FILE", help="a database URL (sqlite:///study.db, postgresql://...) that processes on several machines share; default: a journal file in the study folder"),
         study: Optional[str] = typer.Option(None, "--study", metavar="NAME", help="study name (default: the recipe's name)"),
         jobs: int = typer.Option(1, "--jobs", min=1, metavar="J", help="worker processes on this machine, running trials of the one study"),
         keep_best: int = typer.Option(3, "--keep-best", min=0, metavar="K", help="only the best K trials keep their checkpoints (every trial keeps its metrics and recipe)"),
         set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override a recipe value (repeatable)"),
         output: Optional[Path] = typer.Option(None, "--output", metavar="DIR", help="study folder (default: <output_dir>/<study>-tune)"),
         cache: Optional[Path] = typer.Option(None, "--cache", metavar="DIR", help="where trials share decoded images and features (default: the study folder's cache/)"),
         device: Optional[str] = typer.Option(None, "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps"),
         progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar of the trials")) -> None:
    """Search the recipe's tune.space with Optuna (TPE, pruning each epoch); best-recipe.yaml, trials.csv and plots."""
    _api()
    from transferkit.tune.report import print_report, write_report
    from transferkit.tune.study import TuneSettings
    from transferkit.tune.study import tune as run_study
    from transferkit.tune.trial import TrialInterrupted

    settings = TuneSettings(recipe, trials, list(set_), timeout, storage, study, jobs, keep_best, output, cache, device)
    try:
        done = run_study(settings, err, progress)
    except TrialInterrupted:
        err.print("interrupted: the trial that was running is marked failed; run the same command to continue the "
                  "study", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    prepared = done.prepared
    print_report(write_report(prepared.study, prepared.trials), prepared.trials, out)
    err.print(f"tune: {done.outcome.ran} trial(s) run by this process in {done.seconds:.0f}s; stopped: "
              f"{done.outcome.stopped}", highlight=False, soft_wrap=True)
    failed = [code for code in done.worker_codes if code]
    if failed:
        raise TransferkitError(f"{len(failed)} of the {jobs - 1} worker process(es) --jobs started failed (exit "
                               f"codes {', '.join(map(str, failed))}); their messages are above")
    if (prepared.trials.folder.best_recipe).is_file():
        err.print(f"repeat the best trial with: transferkit run {shlex.quote(str(prepared.trials.folder.best_recipe))}",
                  highlight=False, soft_wrap=True)


@app.command("lr-find")
def lr_find(recipe: str = typer.Argument(..., help="recipe YAML file, or a plugin's recipe name"),
            set_: list[str] = typer.Option([], "--set", help="override a recipe value, e.g. --set data.batch_size=32"),
            variant: Optional[str] = typer.Option(None, "--variant", help="which variant to sweep (default: the base)"),
            device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps"),
            steps: int = typer.Option(200, "--steps", min=10, help="optimizer updates in the sweep"),
            start_lr: float = typer.Option(1e-7, "--start-lr", help="first LR tried"),
            end_lr: float = typer.Option(10.0, "--end-lr", help="last LR tried"),
            output: Path = typer.Option(Path("lr-find.png"), "--output", "-o", help="PNG of the loss curve"),
            progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars")) -> None:
    """Sweep the learning rate on a copy of the model and suggest one; writes a PNG, leaves no run behind."""
    api = _api()
    from transferkit.run.lr_find import sweep_recipe, write_plot

    experiment = api.Experiment.from_yaml(recipe, set_)
    spec = experiment.variant_spec(variant or experiment.spec.base_variant)
    if device:
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"device": device})})
    if not 0 < start_lr < end_lr:
        raise TransferkitError(f"--start-lr {start_lr} / --end-lr {end_lr}: need 0 < start < end, e.g. 1e-7 and 10")
    result = sweep_recipe(spec, err, progress, start_lr, end_lr, steps)
    write_plot(result, output, f"{spec.name}: lr-find ({len(result.lrs)} updates)")
    err.print(f"lr-find: {len(result.lrs)} updates from {result.lrs[0]:.1e} to {result.lrs[-1]:.1e}; loss curve in "
              f"{output}", highlight=False, soft_wrap=True)
    if result.suggestion is None:
        err.print(f"lr-find: no suggestion: {result.warning}; keep optimizer.lr ({spec.optimizer.lr:g}), or sweep "
                  f"again with more --steps or a larger data.batch_size", highlight=False, soft_wrap=True)
        return
    out.print(f"--set optimizer.lr={result.suggestion:.3g}", markup=False, highlight=False)


@app.command("compare-backbones")
def compare_backbones(folder: Path = typer.Argument(..., help="data folder: train/ and test/ class folders (val/ optional)"),
                      patterns: list[str] = typer.Argument(None, help="backbones, wildcards or name:weights "
                                                                      "(default: every one with weights here)"),
                      epochs: int = typer.Option(10, "--epochs", min=1, help="epochs of the linear probe"),
                      image_size: Optional[int] = typer.Option(None, "--image-size", min=8,
                                                               help="crop size (default: each backbone's own)"),
                      limit: Optional[int] = typer.Option(None, "--limit", min=2, help="at most N images per split"),
                      output: Path = typer.Option(Path("runs/compare-backbones"), "--output",
                                                  help="folder for compare.json and compare.png"),
                      device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps"),
                      progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars")) -> None:
    """Rank backbones by a linear probe on cached features; print the --backbone line `fit` would use."""
    import time
    from dataclasses import asdict

    _api()
    from transferkit.run.compare_backbones import ProbeSettings, rank_backbones
    from transferkit.run.compare_report import print_ranking, write_outputs

    settings = ProbeSettings(epochs=epochs, image_size=image_size, limit=limit, device=device)
    started = time.perf_counter()
    rows = rank_backbones(folder, patterns or [], settings, err, progress)
    seconds = time.perf_counter() - started
    write_outputs(rows, output, {"folder": str(folder), "patterns": patterns or [], **asdict(settings)}, seconds)
    print_ranking(rows, out, seconds)
    err.print(f"compare.json and compare.png in {output}", highlight=False, soft_wrap=True)
    out.print(rows[0].fit_option, markup=False, highlight=False)


@app.command("list-backbones")
def list_backbones(pattern: Optional[str] = typer.Argument(None, metavar="[PATTERN]", help="shell-style wildcard, e.g. 'resnet*' or 'timm/vit_*'"),
                   source: Optional[str] = typer.Option(None, "--source", metavar="SOURCE", autocompletion=_complete_source,
                                                        help="torchvision, timm or registered"),
                   pretrained: bool = typer.Option(False, "--pretrained", help="only models with pretrained weights, with their weight names")) -> None:
    """List backbone names (sorted): torchvision models, timm/<name> models and registered ones."""
    api = _api()
    from transferkit.model.backbones import list_backbones as names, torchvision_weight_names, weight_sources_for

    if source not in (None, "torchvision", "timm", "registered"):
        raise TransferkitError(f"--source {source}: use torchvision, timm or registered")
    entries = []
    for name in names(pattern, source, pretrained):
        tv = torchvision_weight_names(name) if pretrained else []
        entries.append((name, f"{name}  weights: {', '.join(tv)}" if tv else name))
    if pretrained and source in (None, "timm"):
        for arch, weights in weight_sources_for(pattern, installed_only=True):
            entries.append((arch, f"{arch}  weights: {weights}  ({api.WEIGHT_SOURCES.describe(weights)})"))
    lines = [line for _, line in sorted(entries, key=lambda e: (e[0].lower(), e[1]))]
    if not lines:
        where = f"{f' in {source}' if source else ''}{' with pretrained weights' if pretrained else ''}"
        if pattern:
            err.print(f"no backbone matches {pattern!r}{where}; try a wider pattern such as "
                      f"'*{pattern.strip('*')}*'", markup=False, highlight=False)
        else:
            err.print(f"no backbones{where}" + ("; a plugin registers them (docs/plugins.md)" if source == "registered"
                                                 else ""), markup=False, highlight=False)
        raise typer.Exit(1)
    for line in lines:
        out.print(line, markup=False, highlight=False)


def _print_registry(registry, describe=None) -> None:
    from transferkit.tables import print_table

    rows = [[name, describe(name) if describe else registry.describe(name), registry.origin(name)]
            for name in registry.list()]
    print_table(out, ["name", "description", "from"], rows)


@app.command("list-heads")
def list_heads() -> None:
    """List the registered heads."""
    _print_registry(_api().HEADS)


@app.command("list-tasks")
def list_tasks() -> None:
    """List the registered tasks (what `task:` in a recipe may name)."""
    _print_registry(_api().TASKS)


@app.command("list-datasets")
def list_datasets() -> None:
    """List the registered datasets."""
    _print_registry(_api().DATASETS)


@app.command("list-lr-policies")
def list_lr_policies() -> None:
    """List the registered LR policies."""
    _print_registry(_api().LR_POLICIES)


@app.command("list-optimizers")
def list_optimizers() -> None:
    """List the registered optimizers."""
    _print_registry(_api().OPTIMIZERS)


@app.command("list-callbacks")
def list_callbacks() -> None:
    """List the registered callbacks a recipe's train.callbacks may name (plugins add them)."""
    callbacks = _api().CALLBACKS
    if not len(callbacks):
        err.print("no callbacks registered; a plugin adds them (docs/callbacks.md)", markup=False)
        return
    _print_registry(callbacks)


@app.command("list-loggers")
def list_loggers() -> None:
    """List the registered loggers a recipe's train.loggers may name."""
    _print_registry(_api().LOGGERS)


SCHEDULE_HELP = {"constant": "the base LR throughout (after any warm-up)",
                 "step": "the LR times gamma every step_size epochs",
                 "cosine": "cosine decay from the base LR to min_lr_ratio x base over training",
                 "onecycle": "rise from LR / div_factor to the LR over pct_start of training, then anneal to "
                             "LR / (div_factor x final_div_factor)"}


@app.command("list-schedules")
def list_schedules() -> None:
    """List the LR schedules a recipe's schedule.name may take."""
    import typing

    from transferkit.recipe.spec import ScheduleSpec
    from transferkit.tables import print_table

    names = typing.get_args(ScheduleSpec.model_fields["name"].annotation)
    print_table(out, ["name", "description"], [[n, SCHEDULE_HELP.get(n, "see docs/recipe.md")] for n in names])


@app.command("list-weights")
def list_weights(backbone: Optional[str] = typer.Argument(None, metavar="[BACKBONE]",
                                                         help="a backbone name: list the weights it can load")) -> None:
    """List registered weight sources, or the weights one backbone can load (torchvision names, timm tags, sources)."""
    api = _api()
    from transferkit.model.backbones import weights_for
    from transferkit.tables import print_table

    if backbone is None:
        rows = []
        for name in api.WEIGHT_SOURCES.list():
            source = api.WEIGHT_SOURCES.get(name)
            installed = getattr(source, "is_installed", None)
            rows.append([name, getattr(source, "architecture", "?"),
                         ("yes" if installed() else "no") if callable(installed) else "?",
                         api.WEIGHT_SOURCES.describe(name)])
        if not rows:
            err.print("no weight sources registered", markup=False)
            return
        print_table(out, ["weights", "fits", "installed", "description"], rows)
        return
    rows = weights_for(backbone)
    if not rows:
        err.print(f"{backbone}: no pretrained weights; train it with backbone.pretrained: false", markup=False,
                  highlight=False)
        raise typer.Exit(1)
    print_table(out, ["weights", "kind", "description"], rows)


@app.command("list-recipes")
def list_recipes() -> None:
    """List recipes registered by plugins (usable by name in `run`)."""
    from transferkit.recipe.yaml_io import read_yaml

    recipes = _api().RECIPES
    _print_registry(recipes, lambda name: str(read_yaml(recipes.get(name)).get("description", "")))


@app.command()
def plugins() -> None:
    """Show which plugins loaded, from which package, what each registered, and any that failed."""
    import os

    from transferkit.plugins import DISABLE_ENV
    from transferkit.tables import print_table

    infos = _api().load_plugins()
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        out.print(f"plugin autoload is off ({DISABLE_ENV} is set)")
        return
    if not infos:
        out.print("no plugins installed (entry-point group transferkit.plugins)")
        return
    rows = []
    for info in infos:
        registered = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.registered.items())
        rows.append([info.name, info.package, f"failed: {info.error}" if info.error else "loaded", registered or "-"])
    print_table(out, ["plugin", "package", "status", "registered"], rows)


@app.command()
def schema(output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE",
                                                 help="file to write (default: print it)"),
           markdown: bool = typer.Option(False, "--markdown", help="the Markdown key reference (docs/recipe.md) instead")) -> None:
    """Print or write the recipe's JSON Schema (every key, type, default, description), or its Markdown reference."""
    from transferkit.files import atomic_write_text
    from transferkit.recipe.schema import json_schema_text, markdown as markdown_text

    text = markdown_text() if markdown else json_schema_text()
    if output is None:
        sys.stdout.write(text)
        return
    atomic_write_text(output, text)
    err.print(f"wrote {output}", markup=False, highlight=False)


@app.command()
def preview(target: str = typer.Argument(..., metavar="TARGET", autocompletion=_complete_recipe,
                                         help="recipe file, recipe name, dataset name or data folder"),
            output: Path = typer.Option(Path("preview.png"), "--output", "-o", metavar="FILE", help="PNG to write"),
            root: Optional[str] = typer.Option(None, "--root", metavar="DIR", help="data root when TARGET is a dataset name"),
            set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override a recipe value (repeatable)"),
            cell: int = typer.Option(128, "--cell", min=16, metavar="PIXELS", help="pixel size of each image in the grid"),
            classes: int = typer.Option(20, "--classes", min=1, metavar="N", help="show at most this many classes")) -> None:
    """Write a PNG grid of training images: a row per class (up to --classes), 8 images each, labelled."""
    from transferkit.data.preview import write_preview
    from transferkit.run.targets import splits_for

    _api()
    splits = splits_for(target, root, set_)
    grid = write_preview(splits, output, cell=cell, max_classes=classes)
    shown = min(classes, len(splits.classes))
    more = f" (first {shown} of {len(splits.classes)}; --classes N for more)" if shown < len(splits.classes) else ""
    err.print(f"wrote {output} ({grid.width}x{grid.height}): {shown} classes{more}: "
              f"{', '.join(splits.classes[:shown])}", markup=False, highlight=False)


@app.command("check-data")
def check_data(target: str = typer.Argument(..., metavar="TARGET", autocompletion=_complete_recipe,
                                            help="recipe file, recipe name, or data folder"),
               set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override a recipe value (repeatable)"),
               workers: int = typer.Option(1, "--workers", min=1, metavar="N", help="processes reading images")) -> None:
    """Read every image and report broken, duplicate, conflicting, hidden or misplaced files, and every bad row of
    a label table (a .csv TARGET, or a recipe's data.labels), with its line (exit 1 if any)."""
    from transferkit.tables import print_table
    from transferkit.run.targets import check_target

    _api()
    report = check_target(target, set_, workers, progress=err.is_terminal)
    if report.problems:
        print_table(out, ["problem", "path", "explanation"], report.rows())
    out.print(f"{report.images_checked} images checked, {len(report.problems)} problem(s)", markup=False,
              highlight=False)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def shard(target: str = typer.Argument(..., metavar="FOLDER|TABLE.csv", help="folder of class folders (train/ and "
                                                                            "test/, val/ optional), or a label table"),
          folder: Path = typer.Argument(..., metavar="OUT", help="new or empty folder for the shards and index.json"),
          shard_size: str = typer.Option("256MB", "--shard-size", metavar="SIZE", help="about how large each shard "
                                         "is, e.g. 256MB, 1GB (a split's images are spread evenly)"),
          shards: Optional[int] = typer.Option(None, "--shards", metavar="N", help="the training split in exactly N "
                                               "shards (a multiple of processes x loader workers reads each image "
                                               "once an epoch); the other splits by --shard-size"),
          set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="how to read the data, e.g. --set "
                                         "data.split_ratio=0.2, --set task=multi_label, --set seed=1 (repeatable)")) -> None:
    """Write a data set's splits as WebDataset tar shards with an index (images per shard and class); identical bytes on a rerun."""
    from transferkit.run.shard import shard_target

    result = shard_target(target, folder, shard_size, set_, lambda path, images: err.print(
        f"wrote {path.name}: {images} images, {path.stat().st_size / 1e6:.1f} MB", highlight=False), shards)
    shards = sum(len(split.shards) for split in result.index.splits.values())
    images = sum(split.images for split in result.index.splits.values())
    err.print(f"{shards} shards, {images} images and {result.out / 'index.json'} in {result.out}; train on them with:",
              highlight=False, soft_wrap=True)
    for line in result.recipe_lines():
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def evaluate(model: str = typer.Argument(..., help="run directory (runs/<name>/<variant>), checkpoint, or exported .onnx, OpenVINO .xml or TorchScript file"),
             data: Optional[Path] = typer.Option(None, "--data", help="folder of class sub-folders (or one with test/, val/), "
                                                                     "label table, or shard folder; default: the "
                                                                     "split the run trained with"),
             split: str = typer.Option("test", "--split", help="test or val"),
             device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps"),
             output: Optional[Path] = typer.Option(None, "--output", help="folder for the results; default "
                                                                         "<run>/evaluation/<split>/ for a run, "
                                                                         "<name>-evaluation/<split>/ beside an "
                                                                         "exported file"),
             progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress")) -> None:
    """Loss, top-1/top-5 accuracy, per-class precision/recall/F1, confusion matrix and top losses."""
    from transferkit.inference.evaluate import default_output, evaluate_folder, print_evaluation, print_unreadable
    from transferkit.inference.backends import load_predictor

    if split not in ("test", "val"):
        raise TransferkitError(f"--split {split}: use test or val")
    predictor = load_predictor(model, device)
    target = output or default_output(predictor, split)
    result = evaluate_folder(predictor, data, split, target, err, progress)
    print_evaluation(result, out, f"{predictor.source}: {split} ({result.metrics['data']})")
    print_unreadable(result, err)
    err.print(f"wrote {target} (metrics.json, per_class.csv, confusion_matrix.png/.csv, reliability.png, top_losses.png, "
              f"misclassified.csv, predictions.csv)", highlight=False, soft_wrap=True)


@app.command()
def predict(model: str = typer.Argument(..., help="run directory, checkpoint (.pt), or exported .onnx, OpenVINO .xml or TorchScript file"),
            inputs: list[str] = typer.Argument(..., help="image files, folders, .txt files of paths, or - for stdin"),
            top_k: int = typer.Option(5, "--top-k", min=1, help="labels and probabilities per row"),
            output: Optional[Path] = typer.Option(None, "--output", "-o", help="preds.csv or preds.jsonl; "
                                                                              "default: CSV on standard output"),
            overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output file"),
            device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps"),
            batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="images per batch"),
            progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress")) -> None:
    """Classify images: one row per input, written as it goes; exit 1 when some could not be read."""
    from transferkit.inference.inputs import collect_inputs
    from transferkit.inference.predict_files import output_format, predict_to_file
    from transferkit.inference.backends import load_predictor

    output_format(output)  # a bad name is refused before the model loads
    if output is not None and output.exists() and not overwrite:
        raise TransferkitError(f"--output {output}: file exists; choose another name or add --overwrite")
    paths = collect_inputs(inputs)
    predictor = load_predictor(model, device, batch_size)
    summary = predict_to_file(predictor, paths, output, top_k, err, overwrite, progress)
    where = f" -> {output}" if output else ""
    err.print(f"{summary.predicted} predicted, {summary.failed} unreadable{where}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if summary.failed else 0)


@app.command()
def explain(model: str = typer.Argument(..., help="run directory or checkpoint (.pt); exported models carry no gradients"),
            inputs: list[str] = typer.Argument(..., metavar="IMAGE...", help="image files, folders, .txt files of "
                                                                             "paths, or - for stdin"),
            output: Path = typer.Option(Path("gradcam.png"), "--output", "-o", help="PNG grid of the overlays"),
            layer: Optional[str] = typer.Option(None, "--layer", metavar="NAME", help="backbone layer to read "
                                                "(default: its last spatial map, e.g. layer4 of a ResNet)"),
            target: Optional[str] = typer.Option(None, "--target", metavar="NAME", help="class, label or target to "
                                                 "explain (default: the predicted class; multi_label: the most "
                                                 "probable label; regression: the first target)"),
            limit: int = typer.Option(32, "--limit", min=1, help="explain at most this many images"),
            overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output file"),
            device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps")) -> None:
    """Grad-CAM: where in each image the model's answer comes from, as heatmap overlays in one PNG grid."""
    if output.suffix.lower() != ".png":
        raise TransferkitError(f"--output {output}: the grid is a PNG; give a name ending in .png")
    if output.exists() and not overwrite:
        raise TransferkitError(f"--output {output}: file exists; choose another name or add --overwrite")
    from transferkit.files import atomic_write_bytes
    from transferkit.inference.explain import explain as grad_cam, explainable
    from transferkit.inference.inputs import collect_inputs
    from transferkit.inference.plots import explanations_png
    from transferkit.tables import print_table

    paths = collect_inputs(inputs)
    if len(paths) > limit:
        err.print(f"explaining the first {limit} of {len(paths)} images (--limit N for more)", highlight=False)
    predictor = explainable(model, device)
    layer_name, found = grad_cam(predictor, paths[:limit], layer, target)
    good = [e for e in found if e.error is None]
    print_table(out, ["image", "answer", "heat for"],
                [[e.source, e.error or e.answer, "" if e.error else f"{e.explained} ({e.score:.3g})"] for e in found])
    if not good:
        raise TransferkitError(f"none of the {len(found)} images could be read; check them with "
                               f"`transferkit check-data`")
    captions = [f"{Path(e.source).name[:28]}\n{e.answer}\nheat for {e.explained}" for e in good]
    title = f"Grad-CAM of {predictor.spec.backbone.name} at layer {layer_name} ({predictor.source})"
    atomic_write_bytes(output, explanations_png([e.overlay for e in good], captions, title))
    err.print(f"wrote {output}: {len(good)} overlay(s), Grad-CAM at layer {layer_name}"
              f"{f'; {len(found) - len(good)} unreadable' if len(good) < len(found) else ''}",
              highlight=False, soft_wrap=True)
    raise typer.Exit(1 if len(good) < len(found) else 0)


@app.command()
def export(model: str = typer.Argument(..., help="run directory or checkpoint"),
           format: str = typer.Option("onnx", "--format", help="onnx, onnx-fp16, onnx-int8, openvino or torchscript "
                                                                "(docs/using-models.md#export)"),
           output: Optional[Path] = typer.Option(None, "--output", help="file to write; default beside the checkpoint"),
           check: Optional[int] = typer.Option(None, "--check", min=0, help="images to compare with PyTorch "
                                               "(default 64: the run's test images, else synthetic; 0: no check)"),
           calibration: Optional[int] = typer.Option(None, "--calibration", min=1, help="onnx-int8: training images "
                                                     "that set the activation ranges (default 200)"),
           data: Optional[Path] = typer.Option(None, "--data", help="the run's data folder, when it moved (check "
                                                                   "and calibration images)"),
           overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing file")) -> None:
    """Write the model (normalisation, classes, preprocessing and task inside), checked against PyTorch within the
    format's tolerance."""
    from transferkit.inference.backends import is_export
    from transferkit.inference.checkpoint_io import read_checkpoint
    from transferkit.inference.export import export_model
    from transferkit.inference.torch_predictor import TorchPredictor

    if is_export(model):
        raise TransferkitError(f"{model}: already an exported model; export takes a run directory or checkpoint")
    result = export_model(TorchPredictor(read_checkpoint(model), "cpu"), format, output, check, calibration, data,
                          overwrite)
    err.print(result.line(), highlight=False, soft_wrap=True)
    if result.card is not None:
        err.print(f"model card: {result.card}", markup=False, highlight=False, soft_wrap=True)
    out.print(str(result.path), markup=False, highlight=False)


@app.command()
def benchmark(model: str = typer.Argument(..., help="run directory or checkpoint"),
              data: Optional[str] = typer.Option(None, "--data", help="labelled images: class folders, or a folder "
                                                                     "with test/ (default: the run's test split)"),
              formats: Optional[list[str]] = typer.Option(None, "--formats", help="some of pytorch, onnx, onnx-fp16, "
                                                          "onnx-int8, openvino, torchscript, comma-separated "
                                                          "(default: all)"),
              output: Optional[Path] = typer.Option(None, "--output", help="folder for the exports and "
                                                                         "benchmark.json/.md/.png; default "
                                                                         "<run>/benchmark/"),
              batch: int = typer.Option(32, "--batch", min=1, help="batch of the images/s measurement"),
              limit: Optional[int] = typer.Option(None, "--limit", min=1, help="at most N labelled images"),
              rounds: int = typer.Option(6, "--rounds", min=1, help="alternating speed rounds (each: 10 batch-1 "
                                                                     "calls and one full batch per format)"),
              calibration: Optional[int] = typer.Option(None, "--calibration", min=1, help="onnx-int8 calibration "
                                                        "images from the run's training split (default 200)"),
              progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress")) -> None:
    """Every export format of one model side by side: size, batch-1 latency, images/s, accuracy, agreement with fp32."""
    from transferkit.run.benchmark import BenchmarkSettings, run_benchmark
    from transferkit.run.benchmark_report import print_benchmark, write_benchmark

    _api()
    settings = BenchmarkSettings(formats=formats, data=data, limit=limit, batch=batch, rounds=rounds,
                                 calibration=calibration)
    result = run_benchmark(model, output, settings, err, progress)
    written = write_benchmark(result, result.output)
    print_benchmark(result, out)
    err.print(f"wrote {', '.join(str(p) for p in written)} in {result.seconds:.0f}s", highlight=False, soft_wrap=True)


@app.command()
def serve(model: str = typer.Argument(..., help="run directory, checkpoint (.pt), or exported .onnx, OpenVINO .xml or TorchScript file"),
          host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
          port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0: a free one, printed)"),
          backend: Optional[str] = typer.Option(None, "--backend", help="torch, onnx or openvino; default: the file decides "
                                                "(a check that it runs the file given)"),
          device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps"),
          max_batch: int = typer.Option(32, "--max-batch", min=1, help="most images in one forward pass (1: no batching)"),
          max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0, help="how long a batch waits for more "
                                            "images after its first"),
          max_body_mb: float = typer.Option(20.0, "--max-body-mb", min=0.001, help="largest request body, in MiB"),
          max_images: int = typer.Option(64, "--max-images", min=1, help="most images in one request")) -> None:
    """Serve a model over HTTP: POST /predict, GET /health, /metadata, /stats, and a page at / to drop photos on."""
    from transferkit.serve.server import ServeSettings, serve as run_server

    settings = ServeSettings(host, port, backend, device, max_batch, max_wait_ms, round(max_body_mb * 2**20), max_images)
    stats = run_server(model, settings, lambda line: err.print(line, markup=False, highlight=False, soft_wrap=True))
    err.print(f"stopped: {stats.requests} requests answered, {sum(stats.refused.values())} refused, "
              f"{stats.images} images in {stats.batches} forward passes", highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point: user errors print one line and exit 2 (tracebacks only with --debug)."""
    try:
        preload()  # the CPU allocator: a process's malloc is chosen before it starts
        app()
    except TransferkitError as exc:
        if _state["debug"]:
            raise
        message = " ".join(str(exc).split())
        if _rank():
            message = f"rank {_rank()}: {message}"
        err.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
