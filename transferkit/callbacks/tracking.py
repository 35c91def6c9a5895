"""What the loggers send an experiment tracker: the recipe as flat parameters, an epoch's numbers, the run's files."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from transferkit.rundir import RunDir, RunRoot


def flat_params(recipe: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """The recipe as dotted keys (`optimizer.lr`: 0.01); lists become their text, unset values are left out."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in recipe.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            if key != "variants" or prefix:  # a variant's own recipe is flat already
                out.update(flat_params(value, name))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif value is not None:
            out[name] = str(value)
    return out


def epoch_metrics(row: dict) -> dict[str, float]:
    """An epoch's finite numeric metrics, without the epoch number itself (that is the step)."""
    return {key: float(value) for key, value in row.items()
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def run_files(run_dir: Path, model: bool = False) -> list[tuple[Path, str]]:
    """(file, folder inside the tracker's artifacts) of what a finished variant leaves: its recipe (spec.yaml),
    data_plan.json, every PNG (evaluation/, the run's curves.png), and with `model` its best.pt (or last.pt)."""
    variant, curves = RunDir(run_dir), RunRoot(run_dir.parent).curves
    files = [(path, "") for path in (variant.spec, variant.data_plan) if path.is_file()]
    files += [(png, "" if png.parent == run_dir else png.parent.relative_to(run_dir).as_posix())
              for png in sorted(run_dir.rglob("*.png"))]
    if curves.is_file():  # the comparison of all variants, in the run root
        files.append((curves, ""))
    if model:
        weights = variant.checkpoint()
        if weights is not None:
            files.append((weights, "model"))
    return files


def missing_package(module: str, logger: str, extra: str) -> str | None:
    """'train.loggers: mlflow needs the mlflow package; ...' when `module` cannot be imported here, else None."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it (imports of it are blocked)
        found = False
    if found:
        return None
    return (f"{logger} needs the {module} package, which is not installed; pip install \"transferkit[{extra}]\" "
            f"(or drop {logger} from train.loggers)")
