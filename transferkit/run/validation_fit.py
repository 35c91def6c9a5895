"""After training: let the task adjust its decisions to the best weights' validation outputs (multi_label
thresholds), and keep what it chose in best.pt, where predict, evaluate and export read it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from transferkit.callbacks.checkpoint import load_checkpoint
from transferkit.files import atomic_torch_save
from transferkit.run.assemble import Assembled
from transferkit.rundir import RunDir


def fit_task_to_validation(parts: Assembled, run_dir: Path, console: Console) -> None:
    """Evaluate best.pt's weights on the validation split and hand the outputs to the task; every process runs it
    (each holds a share of the split), the primary writes."""
    trainer, placement = parts.trainer, parts.placement
    best = RunDir(run_dir).best
    if "val" not in parts.eval_loaders or not placement.broadcast(best.is_file() if placement.is_primary else None):
        return
    saved = placement.broadcast(load_checkpoint(best) if placement.is_primary else None)
    current = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.load_state_dict(saved["model"])
    try:
        logits, targets, _ = trainer.predict(parts.eval_loaders["val"], "val (best weights)")
    finally:
        trainer.model.load_state_dict(current)
    if placement.distributed:
        import torch

        parts_all = [p for p in placement.gather((logits, targets)) if len(p[1])]
        logits, targets = torch.cat([p[0] for p in parts_all]), torch.cat([p[1] for p in parts_all])
    note = parts.task.fit_to_validation(logits, targets)
    if note is None:
        return
    if placement.is_primary:
        saved["task"] = {"name": parts.task.name, "state": parts.task.state_dict()}
        atomic_torch_save(best, saved)
    console.print(f"  best.pt: {note}", highlight=False)
