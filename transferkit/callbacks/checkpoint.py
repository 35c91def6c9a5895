"""Checkpoints: last.pt (everything an exact resume needs) and best.pt (the best weights and what predicting needs)."""

from __future__ import annotations

from pathlib import Path

from transferkit.callbacks.best import BestTracker
from transferkit.callbacks.ema import EMA
from transferkit.engine.callbacks import Callback, RunContext
from transferkit.engine.trainer import Trainer
from transferkit.files import atomic_torch_save
from transferkit.model.checkpoint_format import checkpoint_identity, load_checkpoint  # noqa: F401  (its callers know it from here)
from transferkit.model.preprocess import Preprocessing
from transferkit.recipe.spec import ExperimentSpec
from transferkit.rundir import RunDir

PER_TENSOR = 1024  # a tensor's pickle record and archive entry in a torch.save file, with room to spare
RECORD = 1 << 16  # recipe, classes, history, RNG states


def optimizer_slots(optimizer) -> int:
    """Tensors of each parameter's size the optimizer keeps once it has stepped (AdamW 2, SGD with momentum 1)."""
    d = optimizer.defaults
    if "betas" in d:
        return 2 + bool(d.get("amsgrad"))
    if "alpha" in d:  # RMSprop: the squared average, a momentum buffer, a centred mean
        return 1 + bool(d.get("momentum")) + bool(d.get("centered"))
    if "momentum" in d:
        return 1 if d["momentum"] else 0
    return 2  # a plugin's optimizer: assume Adam's two moments


def checkpoint_sizes(spec: ExperimentSpec, model, optimizer) -> tuple[int, int]:
    """About how many bytes last.pt and best.pt will take (0: not written): the weights, the optimizer's state once
    every parameter has some (after unfreezing too), EMA's copy, and each tensor's record."""
    if not spec.train.checkpoint:
        return 0, 0
    state = model.state_dict()
    weights = sum(t.nbytes for t in state.values()) + PER_TENSOR * len(state)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    slots = optimizer_slots(optimizer)
    moments = slots * sum(p.nbytes for p in params) + PER_TENSOR * len(params) * (slots + 1)
    last = weights * (2 if spec.train.ema else 1) + moments + RECORD
    return last, 0 if spec.train.keep == "last" else weights + RECORD


class Checkpoint(Callback):
    """Writes last.pt after every epoch and on interrupt, best.pt when the tracker selects the epoch.

    train.keep: `last` writes no best.pt; `best` removes last.pt once training has finished. Under several
    processes every one runs it (the trainer's state gathers each one's RNG state) and the primary writes.
    """

    def __init__(self, run_dir: Path, spec: ExperimentSpec, classes: list[str], preprocessing: Preprocessing):
        self.run_dir, self.spec, self.classes, self.preprocessing = run_dir, spec, list(classes), preprocessing
        self.files = RunDir(run_dir)
        self.keep = spec.train.keep

    @classmethod
    def from_run(cls, run: RunContext) -> "Checkpoint | None":
        """On unless train.checkpoint is false; on every process (each contributes its RNG state)."""
        return cls(run.run_dir, run.spec, run.classes, run.preprocessing) if run.spec.train.checkpoint else None

    def _identity(self, trainer: Trainer) -> dict:
        task = trainer.task  # its name, outputs and state (thresholds, target scale) travel with the weights
        return checkpoint_identity(self.classes, self.preprocessing, self.spec.model_dump(mode="json"),
                                   {"name": task.name, "state": task.state_dict()})

    def save_last(self, trainer: Trainer) -> None:
        """last.pt: the trainer's whole state."""
        state = trainer.state_dict()
        if trainer.placement.is_primary:
            atomic_torch_save(self.files.last, {**self._identity(trainer), **state})

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict) -> None:
        tracker = trainer.callback(BestTracker)
        if self.keep != "last" and (tracker is None or tracker.selected) and trainer.placement.is_primary:
            source = tracker.source if tracker else "raw"
            ema = trainer.callback(EMA)
            weights = ema.averaged_state(trainer.model) if source == "ema" and ema else trainer.model.state_dict()
            atomic_torch_save(self.files.best, {
                **self._identity(trainer), "model": weights, "epoch": epoch, "metrics": row, "weights": source,
                "selected_on": tracker.metric if tracker else None})
        self.save_last(trainer)

    def on_interrupt(self, trainer: Trainer) -> None:
        self.save_last(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.keep == "best" and trainer.placement.is_primary:
            self.files.last.unlink(missing_ok=True)
