"""The one place a run's callbacks are built and ordered (Lightning's callback connector is the model).

The order is the list's: the built-in features (each made from its own recipe section), then the recipe's
`train.callbacks` and the callbacks handed to `Experiment.run`, then the console line and `train.loggers`
(which so see every metric the callbacks added to an epoch's row), and the checkpoint last, so last.pt holds
every other callback's state as of the end of the epoch. A new lifecycle feature is its callback file, with a
`from_run(run)` that reads its recipe section, plus one entry in FEATURES.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from transferkit.callbacks.bad_images import BadImageReport
from transferkit.callbacks.best import BestTracker
from transferkit.callbacks.budget import Budget
from transferkit.callbacks.checkpoint import Checkpoint
from transferkit.callbacks.early_stopping import EarlyStopping
from transferkit.callbacks.ema import EMA
from transferkit.callbacks.freeze_schedule import FreezeSchedule
from transferkit.callbacks.run_clock import RunClock
from transferkit.callbacks.metrics_log import EpochLine
from transferkit.engine.callbacks import Callback, RunContext
from transferkit.errors import SpecError
from transferkit.registry import CALLBACKS, LOGGERS
from transferkit.run import report

# Built-in lifecycle features in the order they run: the freeze schedule sets trainability before anything else,
# EMA adds its metrics in after_evaluate, the tracker judges them, early stopping reads its verdict.
FEATURES: tuple[Callable[[RunContext], Callback | None], ...] = (
    FreezeSchedule.from_run, Budget.from_run, EMA.from_run, BestTracker.from_run, EarlyStopping.from_run,
    BadImageReport.from_run, RunClock.from_run)


def _registered(registry, items, run: RunContext) -> list[Callback]:
    """Each recipe item made as `registry.get(name)(run, options)`, its options validated against its model."""
    return [registry.get(item.name)(run, registry.parse_options(item.name, item.options)) for item in items]


def _stateful(callback: Callback) -> bool:
    return type(callback).state_dict is not Callback.state_dict


def refuse_duplicate_state_keys(callbacks: Sequence[Callback]) -> None:
    """SpecError when two callbacks that keep state would be saved under one key of last.pt["callbacks"]."""
    seen: dict[str, Callback] = {}
    for callback in callbacks:
        if not _stateful(callback):
            continue
        key = callback.state_key
        if key in seen:
            raise SpecError(f"callbacks: {type(seen[key]).__name__} and {type(callback).__name__} both keep state "
                            f"under '{key}' in last.pt; give one a state_key of its own (override the state_key "
                            f"property), or use one of them")
        seen[key] = callback


class CallbackConnector:
    """Builds each variant's callbacks in the one order above, and calls on_run_end once the run's reports exist.

    `extra` are callback instances from Python (`Experiment.run(callbacks=[...])`); the same instances serve
    each variant in turn.
    """

    def __init__(self, extra: Sequence[Callback] = ()):
        for callback in extra:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks: {callback!r} is not a transferkit.engine.callbacks.Callback")
        self.extra = list(extra)
        self.waiting: dict[str, list[Callback]] = {}  # variant -> callbacks that want on_run_end

    def build(self, run: RunContext) -> list[Callback]:
        """The variant's callbacks, in order; loggers and the console line on the primary process only."""
        t = run.spec.train
        callbacks = [cb for make in FEATURES if (cb := make(run)) is not None]
        callbacks += _registered(CALLBACKS, t.callbacks, run) + self.extra
        if run.placement.is_primary:
            metric = run.task.default_metric if run.task else "accuracy"
            callbacks.append(EpochLine(lambda row, epochs: run.console.print(
                report.epoch_line(run.variant, row, epochs, metric), highlight=False)))
            callbacks += _registered(LOGGERS, t.loggers, run)
        checkpoint = Checkpoint.from_run(run)
        if checkpoint is not None:
            callbacks.append(checkpoint)
        refuse_duplicate_state_keys(callbacks)
        self.waiting[run.variant] = [cb for cb in callbacks if type(cb).on_run_end is not Callback.on_run_end]
        return callbacks

    def run_ended(self, variant: str, run_dir: Path) -> None:
        """Tell the variant's callbacks its reports are written (primary process, after evaluation)."""
        for callback in self.waiting.pop(variant, []):
            callback.on_run_end(run_dir)
