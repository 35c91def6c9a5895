"""Which folder a resume continues, and whether it is a run of this recipe: nothing of another run is touched."""

from __future__ import annotations

from pathlib import Path

import yaml

from transferkit.errors import TransferkitError
from transferkit.recipe.spec import ExperimentSpec

# Settings a resume may change: where and how fast it runs, not what it computes.
MAY_CHANGE = {("train", "device"), ("train", "epochs"), ("train", "budget"), ("data", "num_workers"),
              ("data", "eval_batch_size"), ("output_dir",), ("description",), ("train", "loggers")}


def run_root_of(path: Path) -> Path:
    """The run folder a --resume path names: a variant folder (with last.pt, spec.yaml or summary.json) is
    resolved to the run it belongs to."""
    if any((path / name).is_file() for name in ("last.pt", "spec.yaml", "summary.json")):
        return path.parent
    return path


def _flat(value, prefix=()) -> dict[tuple, object]:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flat(item, (*prefix, key)))
        return out
    return {prefix: value}


def differences(saved: dict, wanted: dict) -> list[str]:
    """'train.freeze_epochs: 1 in the run, 2 in the recipe' for every setting that differs and may not."""
    a, b = _flat(saved), _flat(wanted)
    found = []
    for key in sorted(set(a) | set(b), key=str):
        if any(key[:len(allowed)] == allowed for allowed in MAY_CHANGE) or a.get(key) == b.get(key):
            continue
        if key not in a and b.get(key) in (None, False):  # a setting newer than the run, left off: as it was
            continue
        found.append(f"{'.'.join(map(str, key))}: {a.get(key)!r} in the run, {b.get(key)!r} in the recipe")
    return found


def check_resumable(run_root: Path, name: str, variants: dict[str, ExperimentSpec]) -> None:
    """TransferkitError unless every variant folder in `run_root` was started by this recipe: the same experiment
    name, no variant the recipe does not have, and the same settings (but for MAY_CHANGE)."""
    started = {p.name: p for p in run_root.iterdir() if (p / "spec.yaml").is_file()} if run_root.is_dir() else {}
    for variant, folder in sorted(started.items()):
        saved = yaml.safe_load((folder / "spec.yaml").read_text())
        if saved.get("name") != name:
            raise TransferkitError(f"--resume {run_root}: that is a run of experiment '{saved.get('name')}', not "
                                   f"'{name}'; give this recipe's run folder, or run without --resume")
        if variant not in variants:
            raise TransferkitError(f"--resume {run_root}: it holds variant '{variant}', which this recipe (or "
                                   f"--variant) does not have; resume with the recipe and variants it was started with")
        wanted = variants[variant].model_dump(mode="json")
        changed = differences({k: v for k, v in saved.items() if k != "variants"},
                              {k: v for k, v in wanted.items() if k != "variants"})
        if changed:
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            raise TransferkitError(f"--resume {run_root}: variant {variant} was started with other settings: "
                                   f"{changed[0]}{more}; resume with the same recipe and --set values, or run "
                                   f"without --resume")
