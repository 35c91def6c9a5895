"""Early stopping: end training once the tracked metric has not improved for `patience` epochs."""

from __future__ import annotations

from transferkit.callbacks.best import BestTracker
from transferkit.engine.callbacks import Callback, RunContext


class EarlyStopping(Callback):
    """Counts epochs without improvement (as BestTracker judges it) and stops the fit at `patience`."""

    def __init__(self, patience: int):
        self.patience, self.waited, self.stopped_epoch = patience, 0, 0

    @classmethod
    def from_run(cls, run: RunContext) -> "EarlyStopping | None":
        """On when train.early_stopping is set."""
        stop = run.spec.train.early_stopping
        return cls(stop.patience) if stop else None

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        tracker = trainer.callback(BestTracker)
        self.waited = 0 if tracker.improved else self.waited + 1
        if self.waited >= self.patience and epoch < trainer.epochs:
            self.stopped_epoch = epoch
            trainer.stop_reason = (f"early stop after epoch {epoch} of {trainer.epochs}: {tracker.metric} has not "
                                   f"improved for {self.patience} epoch(s); best {tracker.describe()}")

    def state_dict(self) -> dict:
        return {"waited": self.waited, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.waited, self.stopped_epoch = state["waited"], state["stopped_epoch"]
