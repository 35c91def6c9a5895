"""The callback interface: a small set of lifecycle events, and state saved in the checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transferkit.engine.trainer import Trainer


class Callback:
    """No-op hooks; a behaviour with state (checkpoints, EMA, early stopping) overrides the ones it needs.

    Callbacks run in ascending `order`. `state_dict()` is saved under checkpoint["callbacks"][state_key]
    and handed back to `load_state_dict` on resume, so the checkpoint code never needs to know a callback.
    """

    order = 0

    @property
    def state_key(self) -> str:
        """Key of this callback's state in the checkpoint (its class name unless overridden)."""
        return type(self).__name__

    def on_fit_start(self, trainer: "Trainer") -> None:
        """Before the first epoch (of this process: also after a resume)."""

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        """Before an epoch's (or a resumed epoch's remaining) training steps."""

    def after_update(self, trainer: "Trainer", update: int) -> None:
        """After each optimizer update; `update` counts updates since the start of training."""

    def before_evaluate(self, trainer: "Trainer", split: str) -> None:
        """Before the model is evaluated on `split`."""

    def after_evaluate(self, trainer: "Trainer", split: str, row: dict) -> None:
        """After the evaluation of `split`, whose metrics are in `row` already; may add its own."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, row: dict) -> None:
        """After an epoch is trained and evaluated; `row` is its metrics (callbacks may add to it)."""

    def on_interrupt(self, trainer: "Trainer") -> None:
        """Training stopped on request mid-epoch, after a whole optimizer update: save what is needed to resume."""

    def on_fit_end(self, trainer: "Trainer") -> None:
        """After the last epoch, or after an early stop."""

    def state_dict(self) -> dict:
        """What a resume needs of this callback (plain data and tensors only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned."""
