"""`last` and `best` checkpoints of a variant: everything needed to predict with it, or resume it exactly."""

from __future__ import annotations

import math
from pathlib import Path

from transferkit.engine.trainer import Trainer
from transferkit.model.preprocess import Preprocessing
from transferkit.files import atomic_torch_save
from transferkit.run.rundir import load_checkpoint
from transferkit.seeding import rng_state, set_rng_state
from transferkit.recipe.spec import ExperimentSpec


class CheckpointManager:
    """Writes last.pt every epoch and best.pt when the recipe's best_metric improves; restores last.pt."""

    def __init__(self, run_dir: Path, spec: ExperimentSpec, classes: list[str], preprocessing: Preprocessing):
        self.run_dir = run_dir
        self.spec = spec
        self.classes = classes
        self.preprocessing = preprocessing
        self.metric = spec.train.best_metric
        self.best = -math.inf

    def _score(self, row: dict) -> float:
        value = row.get(self.metric, row.get(self.metric.replace("val_", "test_")))
        return -value if self.metric.endswith("loss") else value

    def save(self, trainer: Trainer, epoch: int, history: list[dict], skipped: list[str], seconds: float,
             partial: dict | None = None) -> None:
        """Atomically write last.pt after `epoch` complete epochs (plus an interrupted one's `partial`
        progress), and best.pt when a completed epoch is the best so far."""
        state = {
            "format": "transferkit-checkpoint-1",
            "model": trainer.model.state_dict(),
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "recipe": self.spec.model_dump(mode="json"),
            "epoch": epoch,
            "history": history,
            "skipped": skipped,
            "seconds": seconds,
            "best_score": self.best,
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
            "scaler": trainer.scaler.state_dict(),
            "rng": rng_state(),
            "partial": partial,
        }
        score = self._score(history[-1]) if history and partial is None else -math.inf
        if score > self.best:
            self.best = score
            state["best_score"] = score
            atomic_torch_save(self.run_dir / "best.pt", state)
        atomic_torch_save(self.run_dir / "last.pt", state)

    def restore_last(self, trainer: Trainer) -> dict | None:
        """Load last.pt into the trainer (model, optimizer, scheduler, scaler, RNG); None when absent."""
        path = self.run_dir / "last.pt"
        if not path.is_file():
            return None
        state = load_checkpoint(path)
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        if trainer.scheduler is not None and state.get("scheduler"):
            trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.best = state["best_score"]
        return state

