"""Freeze, then unfreeze (fastai's fine_tune): the head alone for the first epochs, then the whole network."""

from __future__ import annotations

from transferkit.engine.callbacks import Callback, RunContext


class FreezeSchedule(Callback):
    """Backbone weights and batch-norm statistics frozen during epochs 1..`frozen_epochs`, trainable after.

    Every parameter group exists from step 0 (a frozen group simply gets no gradients), so the optimizer,
    the schedule and a resume see the same groups throughout. Stateless: the epoch decides.
    """

    def __init__(self, frozen_epochs: int):
        self.frozen_epochs = frozen_epochs

    @classmethod
    def from_run(cls, run: RunContext) -> "FreezeSchedule | None":
        """On when train.freeze_epochs is set."""
        return cls(run.spec.train.freeze_epochs) if run.spec.train.freeze_epochs else None

    def on_epoch_start(self, trainer, epoch: int) -> None:
        trainer.model.set_backbone_frozen(epoch <= self.frozen_epochs)
