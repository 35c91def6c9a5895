"""The checkpoint format: what best.pt and last.pt carry, and the one reader that checks a file is one of them.

Training (callbacks/checkpoint.py writes, run/ resumes) and inference (predict, evaluate, export) share it, which
is why it sits in the model layer, below both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transferkit.errors import WeightsError
from transferkit.model.preprocess import Preprocessing
from transferkit.model.weights_io import safe_torch_load

CHECKPOINT_FORMAT = "transferkit-checkpoint-1"
PREDICT_KEYS = ("model", "classes", "preprocessing", "recipe")  # what predicting needs; every checkpoint has them


class CheckpointError(WeightsError):
    """A checkpoint that is not transferkit's, or lacks what predicting needs."""


def checkpoint_identity(classes: list[str], preprocessing: Preprocessing, recipe: dict,
                        task: dict | None = None) -> dict:
    """The keys every checkpoint carries so that predict and export need no recipe beside it (`task`: its name
    and state, such as thresholds or the target scale)."""
    identity = {"format": CHECKPOINT_FORMAT, "classes": list(classes), "preprocessing": preprocessing.to_dict(),
                "recipe": recipe}
    return identity if task is None else {**identity, "task": task}


def load_checkpoint(path: str | Path, needs: tuple[str, ...] = ("model",)) -> dict:
    """A checkpoint file loaded with weights_only=True, its format key checked and the `needs` keys present."""
    path = Path(path).expanduser()
    state = safe_torch_load(path)
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        found = f"format {fmt!r}" if fmt is not None else "no 'format' key"
        raise CheckpointError(f"{path}: not a transferkit checkpoint ({found}, expected {CHECKPOINT_FORMAT!r}); "
                              f"give a best.pt or last.pt written by `transferkit run`")
    missing = [key for key in needs if key not in state]
    if missing:
        raise CheckpointError(f"{path}: transferkit checkpoint without {', '.join(missing)}; "
                              f"it may be damaged: use the run's other checkpoint or train again")
    return state


@dataclass
class SavedModel:
    """What a checkpoint holds for inference: weights, class names, preprocessing and recipe."""

    path: Path
    state_dict: dict
    classes: list[str]
    preprocessing: Preprocessing
    recipe: dict
    task: dict | None = None  # {"name", "state"}: thresholds, target scale (None: a checkpoint from before tasks)

    @classmethod
    def read(cls, path: str | Path) -> "SavedModel":
        """The model part of a checkpoint file, read with load_checkpoint."""
        state = load_checkpoint(path, PREDICT_KEYS)
        return cls(Path(path).expanduser(), state["model"], [str(c) for c in state["classes"]],
                   Preprocessing.from_dict(state["preprocessing"]), state["recipe"], state.get("task"))

    @property
    def run_dir(self) -> Path:
        """The variant directory the checkpoint lives in."""
        return self.path.parent
