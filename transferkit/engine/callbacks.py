"""The callback interface: a small set of lifecycle events, state saved in the checkpoint, and what a
registered callback or logger is made from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transferkit.engine.placement import Placement
    from transferkit.engine.trainer import Trainer
    from transferkit.recipe.spec import ExperimentSpec


@dataclass
class RunContext:
    """What a run's callbacks are made from: a registered callback or logger is called as `item(run, options)`."""

    spec: "ExperimentSpec"  # the variant's full recipe
    variant: str
    run_dir: Path
    classes: list[str]
    preprocessing: Any  # model.preprocess.Preprocessing: what predicting needs to repeat
    selection: str | None  # the metric that picks best.pt (None: the last epoch)
    console: Any  # a rich Console; quiet off the primary process
    placement: "Placement"
    started: float  # time.monotonic() when the variant started
    task: Any = None  # tasks.Task: the loss, the metrics and the default best metric (None: single label)


class Callback:
    """No-op hooks; a behaviour with state (checkpoints, EMA, early stopping) overrides the ones it needs.

    Callbacks run in the order of the trainer's list (run/connector.py builds it). `state_dict()` is saved
    under checkpoint["callbacks"][state_key] and handed back to `load_state_dict` on resume, so the checkpoint
    code never needs to know a callback.
    """

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

    def evaluation_weights(self, trainer: "Trainer") -> dict:
        """Other weights to evaluate beside the model's own, in the same pass over each split: {metric prefix:
        state dict} (EMA: {"ema_": the averaged weights}, reported as ema_val_accuracy, ...)."""
        return {}

    def after_evaluate(self, trainer: "Trainer", split: str, row: dict) -> None:
        """After the evaluation of `split`, whose metrics are in `row` already; may add its own. During fit,
        `trainer.outputs[split]` holds each evaluated weights' EpochStats (prefix "" the model's own, "ema_" ...)
        with the split's logits and targets."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, row: dict) -> None:
        """After an epoch is trained and evaluated; `row` is its metrics (callbacks may add to it)."""

    def on_interrupt(self, trainer: "Trainer") -> None:
        """Training stopped on request mid-epoch, after a whole optimizer update: save what is needed to resume."""

    def on_fit_end(self, trainer: "Trainer") -> None:
        """After the last epoch, or after an early stop."""

    def on_run_end(self, run_dir: Path) -> None:
        """On the primary process, once every variant has trained and this one's best checkpoint is evaluated
        (evaluation/, MODEL_CARD.md, curves.png and comparison.json are written): loggers send the run's files here. A callback
        that overrides it is kept until then, so it should hold no tensors."""

    def state_dict(self) -> dict:
        """What a resume needs of this callback (plain data and tensors only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned."""
