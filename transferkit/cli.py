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
from rich.table import Table
from rich.text import Text

from transferkit.errors import TransferkitError
from transferkit.signals import RunInterrupted

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Transfer learning for image classification from one validated YAML recipe.")
out = Console()
err = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show full tracebacks for errors")) -> None:
    _state["debug"] = debug


def _api():
    import transferkit  # registers the built-ins

    transferkit.load_plugins()
    return transferkit


@app.command()
def run(recipe: str = typer.Argument(..., help="recipe YAML file, or a plugin's recipe name"),
        set_: list[str] = typer.Option([], "--set", help="override a recipe value, e.g. --set train.epochs=3"),
        device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps"),
        output: Optional[Path] = typer.Option(None, "--output", help="root folder for run directories"),
        variant: list[str] = typer.Option([], "--variant", help="run only these variants (repeatable)"),
        resume: Optional[str] = typer.Option(None, "--resume", help="run directory to continue, or 'auto'"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
        nproc: Optional[int] = typer.Option(None, "--nproc", help="data-parallel processes on this machine, started "
                                            "through torchrun (data.batch_size stays the global batch)")) -> None:
    """Train every variant of a recipe and compare them."""
    api = _api()
    experiment = api.Experiment.from_yaml(recipe, set_)
    args = ["run", recipe, *[w for s in set_ for w in ("--set", s)], *[w for v in variant for w in ("--variant", v)],
            *(["--device", device] if device else [])]
    if nproc is not None:
        _launch(experiment, nproc, [*args, *(["--output", str(output)] if output else []),
                                    *(["--resume", resume] if resume else []), *([] if progress else ["--no-progress"])])
    # the primary finds the run to resume and hands it to the others (other machines may not see the folder)
    resume_dir = _resume_dir(experiment, output, resume) if resume and _rank() == 0 else Path(resume) if resume else None

    def resume_command(run_root: Path) -> str:
        words = ["transferkit", *args, "--resume", str(run_root)]
        if os.environ.get("TRANSFERKIT_NPROC"):  # started by `--nproc N`
            words += ["--nproc", os.environ["TRANSFERKIT_NPROC"]]
        elif "WORLD_SIZE" in os.environ:  # started by torchrun itself
            words = ["torchrun", "--nproc-per-node", os.environ.get("LOCAL_WORLD_SIZE", "1"), "-m", *words]
        return shlex.join(words)

    try:
        experiment.run(variants=variant or None, output_dir=output, device=device, console=err,
                       progress=progress, resume=resume_dir, resume_command=resume_command)
    except RunInterrupted as stop:
        if _rank() == 0:
            err.print(f"interrupted: {stop.what_resume_does()}; resume with:\n  {resume_command(stop.run_root)}",
                      markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _launch(experiment, nproc: int, args: list[str]) -> None:
    """Check the batch divides over `nproc` processes, then run the same command under torchrun; exits."""
    from transferkit.engine.placement import Placement
    from transferkit.run.launch import launch

    if nproc < 1:
        raise TransferkitError(f"--nproc {nproc}: give 1 or more processes")
    for name in experiment.variant_names:
        Placement(0, nproc).check_batch(experiment.variant_spec(name).data.batch_size)
    code = launch(nproc, args, lambda line: err.print(Text.assemble(("error: ", "bold red"), line),
                                                      highlight=False, soft_wrap=True))
    raise typer.Exit(code)


def _resume_dir(experiment, output: Optional[Path], resume: str) -> Path:
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise TransferkitError(f"--resume {resume}: no such run directory; give the folder printed by the "
                                   f"interrupted run (runs/<name>) or use --resume auto")
        return path
    from transferkit.run.experiment import latest_unfinished_run

    found = latest_unfinished_run(Path(output or experiment.spec.output_dir), experiment.spec.name)
    if found is None:
        raise TransferkitError(f"--resume auto: no unfinished run of '{experiment.spec.name}' under "
                               f"{output or experiment.spec.output_dir}; run without --resume to start one")
    return found


@app.command()
def validate(recipe: str = typer.Argument(..., help="recipe YAML file, or a plugin's recipe name"),
             set_: list[str] = typer.Option([], "--set", help="override a recipe value")) -> None:
    """Check a recipe and print it resolved, each variant expanded in full."""
    api = _api()
    experiment = api.Experiment.from_yaml(recipe, set_)
    resolved = {name: experiment.variant_spec(name).model_dump(mode="json", exclude={"variants"})
                for name in experiment.variant_names}
    out.print(yaml.safe_dump(resolved, sort_keys=False), end="", markup=False, highlight=False, soft_wrap=True)
    err.print(f"[green]recipe is valid[/]: {len(resolved)} run(s): {', '.join(resolved)}")


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
    from transferkit.run.assemble import assemble
    from transferkit.run.lr_find import sweep_lr, write_plot

    experiment = api.Experiment.from_yaml(recipe, set_)
    spec = experiment.variant_spec(variant or experiment.spec.base_variant)
    if device:
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"device": device})})
    if not 0 < start_lr < end_lr:
        raise TransferkitError(f"--start-lr {start_lr} / --end-lr {end_lr}: need 0 < start < end, e.g. 1e-7 and 10")
    parts = assemble(spec, err, progress)
    result = sweep_lr(parts.trainer, parts.train_loader, spec.optimizer.lr, start_lr, end_lr, steps)
    write_plot(result, output, f"{spec.name}: lr-find ({len(result.lrs)} updates)")
    err.print(f"lr-find: {len(result.lrs)} updates from {result.lrs[0]:.1e} to {result.lrs[-1]:.1e}; loss curve in "
              f"{output}", highlight=False, soft_wrap=True)
    out.print(f"--set optimizer.lr={result.suggestion:.3g}", markup=False, highlight=False)


@app.command("list-backbones")
def list_backbones(pattern: Optional[str] = typer.Argument(None, help="shell-style wildcard, e.g. 'resnet*' or 'timm/vit_*'"),
                   source: Optional[str] = typer.Option(None, "--source", help="torchvision, timm or registered"),
                   pretrained: bool = typer.Option(False, "--pretrained", help="only models with pretrained weights")) -> None:
    """List backbone names: torchvision models, timm/<name> models and registered ones."""
    api = _api()
    from transferkit.model.backbones import list_backbones as names

    if source not in (None, "torchvision", "timm", "registered"):
        raise TransferkitError(f"--source {source}: use torchvision, timm or registered")
    for name in names(pattern, source, pretrained):
        out.print(name, markup=False, highlight=False)
    if pretrained:
        for name in api.WEIGHT_SOURCES.list():
            out.print(f"weights: {name}  {api.WEIGHT_SOURCES.describe(name)}", markup=False, highlight=False)


def _print_registry(registry, describe=None) -> None:
    table = Table(show_header=True)
    for column in ("name", "description", "from"):
        table.add_column(column)
    for name in registry.list():
        table.add_row(name, describe(name) if describe else registry.describe(name), registry.origin(name))
    out.print(table)


@app.command("list-heads")
def list_heads() -> None:
    """List the registered heads."""
    _print_registry(_api().HEADS)


@app.command("list-datasets")
def list_datasets() -> None:
    """List the registered datasets."""
    _print_registry(_api().DATASETS)


@app.command("list-lr-policies")
def list_lr_policies() -> None:
    """List the registered LR policies."""
    _print_registry(_api().LR_POLICIES)


@app.command("list-recipes")
def list_recipes() -> None:
    """List recipes registered by plugins (usable by name in `run`)."""
    from transferkit.recipe.spec import read_yaml

    recipes = _api().RECIPES
    _print_registry(recipes, lambda name: str(read_yaml(recipes.get(name)).get("description", "")))


@app.command()
def plugins() -> None:
    """Show which plugins loaded, from which package, what each registered, and any that failed."""
    import os

    from transferkit.plugins import DISABLE_ENV

    infos = _api().load_plugins()
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        out.print(f"plugin autoload is off ({DISABLE_ENV} is set)")
        return
    if not infos:
        out.print("no plugins installed (entry-point group transferkit.plugins)")
        return
    table = Table()
    for column in ("plugin", "package", "status", "registered"):
        table.add_column(column)
    for info in infos:
        registered = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.registered.items())
        status = f"[red]failed: {info.error}[/]" if info.error else "[green]loaded[/]"
        table.add_row(info.name, info.package, status, registered or "-")
    out.print(table)


def _splits_for(target: str, root: Optional[str], set_: list[str]):
    """FolderSplits from a recipe file, a registered recipe, a dataset name or a folder."""
    api = _api()
    from transferkit.run.assemble import load_splits
    from transferkit.recipe.spec import DataSpec, ExperimentSpec

    if Path(target).is_file() or target in api.RECIPES:
        return load_splits(api.Experiment.from_yaml(target, set_).spec)
    if target in api.DATASETS:
        return load_splits(ExperimentSpec(data=DataSpec(dataset=target, root=root)))
    if Path(target).is_dir():
        return load_splits(ExperimentSpec(data=DataSpec(dataset="folder", root=target)))
    from transferkit.registry import suggest
    raise TransferkitError(f"{target}: not a recipe file, registered recipe, dataset or folder"
                           f"{suggest(target, api.DATASETS.list() + api.RECIPES.list())}")


@app.command()
def preview(target: str = typer.Argument(..., help="recipe file, recipe name, dataset name or data folder"),
            output: Path = typer.Option(Path("preview.png"), "--output", "-o", help="PNG to write"),
            root: Optional[str] = typer.Option(None, "--root", help="data root when TARGET is a dataset name"),
            set_: list[str] = typer.Option([], "--set", help="override a recipe value"),
            cell: int = typer.Option(128, "--cell", min=16, help="pixel size of each image in the grid")) -> None:
    """Write a PNG grid: the first 8 images of the first class and the last 8 of the last class."""
    from transferkit.data.preview import write_preview

    splits = _splits_for(target, root, set_)
    grid = write_preview(splits, output, cell=cell)
    err.print(f"wrote {output} ({grid.width}x{grid.height}): {splits.classes[0]} and {splits.classes[-1]}")


@app.command("check-data")
def check_data(target: str = typer.Argument(..., help="recipe file, recipe name, or data folder"),
               set_: list[str] = typer.Option([], "--set", help="override a recipe value"),
               workers: int = typer.Option(1, "--workers", min=1, help="processes reading images")) -> None:
    """Read every image and report broken, duplicate, hidden or misplaced files (exit 1 if any)."""
    from transferkit.data.check import check_folder, check_splits

    _api()
    if Path(target).is_dir():
        report = check_folder(Path(target), workers=workers)
    else:
        report = check_splits(_splits_for(target, None, set_), workers=workers)
    if report.problems:
        out.print(report.table())
    out.print(f"{report.images_checked} images checked, {len(report.problems)} problem(s)")
    raise typer.Exit(0 if report.ok else 1)


def main() -> None:
    """Console-script entry point: user errors print one line and exit 2 (tracebacks only with --debug)."""
    try:
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
