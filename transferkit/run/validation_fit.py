"""After training: let the task adjust its decisions to the selected weights' validation outputs (multi_label
thresholds, single_label's temperature under train.calibrate), and keep what it chose in the checkpoint, where
predict, evaluate and every export read it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from transferkit.files import atomic_torch_save
from transferkit.run.assemble import Assembled


def fit_task_to_validation(parts: Assembled, saved: dict | None, path: Path | None, console: Console) -> str | None:
    """Hand the validation outputs of the weights now in the model to the task; when it changed something, write
    its state into `saved` (the checkpoint read from `path`; None: nothing to write). Every process runs it (each
    holds a share of the split); the primary writes. Returns the task's line, or None."""
    trainer, placement = parts.trainer, parts.placement
    if "val" not in parts.eval_loaders:
        return None
    logits, targets, _ = trainer.predict(parts.eval_loaders["val"], "val (selected weights)")
    note = parts.task.fit_to_validation(*trainer.gathered(logits, targets))
    if note is None:
        return None
    if placement.is_primary and saved is not None and path is not None:
        saved["task"] = {"name": parts.task.name, "state": parts.task.state_dict()}
        atomic_torch_save(path, saved)
    where = path.name if path is not None else "the model (no checkpoint saved)"
    console.print(f"  {where}: {note}", highlight=False)
    return note
