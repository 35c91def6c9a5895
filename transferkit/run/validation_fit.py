"""After training: let the task adjust its decisions to the selected weights' validation outputs (multi_label
thresholds, single_label's temperature under train.calibrate), and keep what it chose in the checkpoint, where
predict, evaluate and every export read it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from transferkit.files import atomic_torch_save
from transferkit.run.assemble import Assembled


def last_validation_outputs(parts: Assembled, saved: dict | None):
    """The validation logits and targets the last epoch's evaluation already computed for the weights `saved`
    holds, when it holds that epoch's (raw or EMA) and they were evaluated without test-time flip; else None."""
    trainer = parts.trainer
    stats = trainer.outputs.get("val", {}).get("ema_" if (saved or {}).get("weights") == "ema" else "")
    epoch = saved.get("epoch") if saved is not None else trainer.epoch
    if stats is None or stats.logits is None or epoch != trainer.epoch or "val" in trainer.flip_splits:
        return None
    return stats.logits, stats.targets


def fit_task_to_validation(parts: Assembled, saved: dict | None, path: Path | None, console: Console) -> str | None:
    """Hand the validation outputs of the weights now in the model to the task (those the last epoch's evaluation
    computed, when they are of these weights; else a pass over the split); when it changed something, write its
    state into `saved` (the checkpoint read from `path`; None: nothing to write). Every process runs it (each
    holds a share of the split); the primary writes. Returns the task's line, or None."""
    trainer, placement = parts.trainer, parts.placement
    if "val" not in parts.eval_loaders:
        return None
    outputs = last_validation_outputs(parts, saved)
    if outputs is None:
        logits, targets, _ = trainer.predict(parts.eval_loaders["val"], "val (selected weights)")
        outputs = trainer.gathered(logits, targets)
    note = parts.task.fit_to_validation(*outputs)
    if note is None:
        return None
    if placement.is_primary and saved is not None and path is not None:
        saved["task"] = {"name": parts.task.name, "state": parts.task.state_dict()}
        atomic_torch_save(path, saved)
    where = path.name if path is not None else "the model (no checkpoint saved)"
    console.print(f"  {where}: {note}", highlight=False)
    return note
