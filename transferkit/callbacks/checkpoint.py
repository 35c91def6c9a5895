"""Checkpoints: last.pt (everything an exact resume needs) and best.pt (the best weights and what predicting needs)."""

from __future__ import annotations

from pathlib import Path

from transferkit.callbacks.best import BestTracker
from transferkit.callbacks.ema import EMA
from transferkit.engine.callbacks import Callback
from transferkit.engine.trainer import Trainer
from transferkit.files import atomic_torch_save
from transferkit.model.checkpoint_format import checkpoint_identity, load_checkpoint  # noqa: F401  (its callers know it from here)
from transferkit.model.preprocess import Preprocessing
from transferkit.recipe.spec import ExperimentSpec
from transferkit.rundir import RunDir


class Checkpoint(Callback):
    """Writes last.pt after every epoch and on interrupt, best.pt when the tracker's metric improves.

    train.keep: `last` writes no best.pt; `best` removes last.pt once training has finished. Under several
    processes every one runs it (the trainer's state gathers each one's RNG state) and the primary writes.
    """

    order = 50

    def __init__(self, run_dir: Path, spec: ExperimentSpec, classes: list[str], preprocessing: Preprocessing):
        self.run_dir, self.spec, self.classes, self.preprocessing = run_dir, spec, list(classes), preprocessing
        self.files = RunDir(run_dir)
        self.keep = spec.train.keep

    def _identity(self) -> dict:
        return checkpoint_identity(self.classes, self.preprocessing, self.spec.model_dump(mode="json"))

    def save_last(self, trainer: Trainer) -> None:
        """last.pt: the trainer's whole state."""
        state = trainer.state_dict()
        if trainer.placement.is_primary:
            atomic_torch_save(self.files.last, {**self._identity(), **state})

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict) -> None:
        tracker = trainer.callback(BestTracker)
        if self.keep != "last" and (tracker is None or tracker.improved) and trainer.placement.is_primary:
            source = tracker.source if tracker else "raw"
            ema = trainer.callback(EMA)
            weights = ema.averaged_state(trainer.model) if source == "ema" and ema else trainer.model.state_dict()
            atomic_torch_save(self.files.best, {
                **self._identity(), "model": weights, "epoch": epoch, "metrics": row, "weights": source,
                "selected_on": tracker.metric if tracker else None})
        self.save_last(trainer)

    def on_interrupt(self, trainer: Trainer) -> None:
        self.save_last(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.keep == "best" and trainer.placement.is_primary:
            self.files.last.unlink(missing_ok=True)
