"""Find and read a trained model: a run directory, a run root with one variant, or a checkpoint file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transferkit.callbacks.checkpoint import CHECKPOINT_FORMAT
from transferkit.errors import TransferkitError, WeightsError
from transferkit.model.preprocess import Preprocessing
from transferkit.model.weights_io import safe_torch_load

CHECKPOINT_NAMES = ("best.pt", "last.pt")
REQUIRED_KEYS = ("model", "classes", "preprocessing", "recipe")


class CheckpointError(WeightsError):
    """A checkpoint that is not transferkit's, or lacks what predicting needs."""


@dataclass
class Checkpoint:
    """What a transferkit checkpoint holds for inference: weights, class names, preprocessing and recipe."""

    path: Path
    state_dict: dict
    classes: list[str]
    preprocessing: Preprocessing
    recipe: dict
    task: dict | None = None  # {"name", "state"}: thresholds, target scale (None: a checkpoint from before tasks)

    @property
    def run_dir(self) -> Path:
        """The variant directory the checkpoint lives in."""
        return self.path.parent


def _checkpoint_in(variant_dir: Path) -> Path | None:
    return next((variant_dir / name for name in CHECKPOINT_NAMES if (variant_dir / name).is_file()), None)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file `path` names: itself, `<variant>/best.pt` (else last.pt), or the one variant of a run root."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise TransferkitError(f"{path}: no such run directory or checkpoint; give runs/<name>/<variant>, "
                               f"its best.pt, or an exported .onnx file")
    found = _checkpoint_in(path)
    if found:
        return found
    variants = sorted(p.name for p in path.iterdir() if p.is_dir() and _checkpoint_in(p))
    if len(variants) == 1:
        return _checkpoint_in(path / variants[0])
    if variants:
        raise TransferkitError(f"{path}: holds {len(variants)} variants ({', '.join(variants)}); "
                               f"name one, e.g. {path / variants[0]}")
    raise TransferkitError(f"{path}: no best.pt or last.pt here or in a variant folder below; "
                           f"give a run directory of a finished `transferkit run`")


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Load a transferkit checkpoint without executing code (weights_only) and check its format key."""
    file = resolve_checkpoint(path)
    state = safe_torch_load(file)
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        found = f"format {fmt!r}" if fmt is not None else "no 'format' key"
        raise CheckpointError(f"{file}: not a transferkit checkpoint ({found}, expected {CHECKPOINT_FORMAT!r}); "
                              f"give a best.pt or last.pt written by `transferkit run`")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{file}: transferkit checkpoint without {', '.join(missing)}; "
                              f"it may be damaged: use the run's other checkpoint or train again")
    return Checkpoint(file, state["model"], [str(c) for c in state["classes"]],
                      Preprocessing.from_dict(state["preprocessing"]), state["recipe"], state.get("task"))
