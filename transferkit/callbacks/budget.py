"""A wall-time budget: after the first epoch, fit the number of epochs (and the LR schedule) to the time left."""

from __future__ import annotations

import math
import time

from typing import Callable

from transferkit.engine.callbacks import Callback, RunContext
from transferkit.recipe.spec import parse_duration

FINISH_SHARE = 0.05  # of the budget, kept for writing the final files


def final_pass_estimate(trainer, row: dict) -> float:
    """Seconds the end of the run will spend evaluating (the validation fit, and the splits not evaluated every
    epoch: the test split under train.eval_test: end), at the pace of this epoch's evaluation."""
    loaders = trainer.eval_loaders
    size = lambda split: len(getattr(loaders[split], "dataset", ()))  # noqa: E731
    evaluated = sum(size(s) * (2 if s in trainer.flip_splits else 1) for s in trainer.per_epoch)
    evaluated *= 1 + len(trainer.other_weights())
    if not evaluated:
        return 0.0
    held = sum(size(s) * (2 if s in trainer.flip_splits else 1) for s in loaders if s not in trainer.per_epoch)
    held += size("val") if "val" in loaders else 0
    seconds = row["epoch_seconds"] - row["step_seconds"] - row["data_wait_seconds"]
    return seconds / evaluated * held


class Budget(Callback):
    """Measures the first epoch trained in this process, then lowers `trainer.epochs` so the run ends inside
    `seconds` (counted from `started`, the run's start, plus what earlier processes of a resumed run spent),
    and re-sizes the schedule to the new length so it still anneals to its end. Each later epoch re-checks
    the pace, and stops early if the epochs got slower. Each decision is handed to `say` when it is made."""

    def __init__(self, seconds: float, started: float | None = None, say: Callable[[str], None] = lambda text: None):
        self.seconds, self.started = seconds, started if started is not None else time.monotonic()
        self.decided: int | None = None
        self.spent_before = 0.0  # by earlier processes of a resumed run
        self.note = ""
        self.say = say

    @classmethod
    def from_run(cls, run: RunContext) -> "Budget | None":
        """On when train.budget is set; counted from the variant's start, its decisions printed as they are made."""
        if not run.spec.train.budget:
            return None
        return cls(parse_duration(run.spec.train.budget), run.started,
                   lambda text: run.console.print(f"{run.variant}: {text}", highlight=False, soft_wrap=True))

    def spent(self) -> float:
        """Seconds of the budget used so far."""
        return self.spent_before + time.monotonic() - self.started

    def on_fit_start(self, trainer) -> None:
        self.cycle_start = time.monotonic()
        self.cycles: list[float] = []
        if self.decided is not None:
            trainer.epochs = min(trainer.epochs, self.decided)

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        now = time.monotonic()
        self.cycles.append(now - self.cycle_start)  # an epoch with the previous one's checkpoint writes
        self.cycle_start = now
        # every process must stop at the same epoch: the primary's pace decides
        per_epoch, left = trainer.placement.broadcast((sum(self.cycles) / len(self.cycles),
                                                        self.seconds * (1 - FINISH_SHARE) - self.spent()
                                                        - final_pass_estimate(trainer, row)))
        if self.decided is None:
            fits = epoch + max(0, math.floor(left / max(per_epoch, 1e-9)))
            self.decided = max(epoch, min(trainer.epochs, fits))
            if self.decided < trainer.epochs:
                self.note = (f"budget {self.seconds:.0f}s: {per_epoch:.1f}s per epoch, so {self.decided} of "
                             f"{trainer.epochs} epochs; the schedule is re-sized to them")
                scheduler = trainer.optimization.scheduler
                if scheduler is not None:
                    for factor in {id(f): f for f in scheduler.lr_lambdas}.values():
                        factor.resize(self.decided)
                trainer.epochs = self.decided
            else:
                self.note = f"budget {self.seconds:.0f}s: all {trainer.epochs} epochs fit ({per_epoch:.1f}s each)"
            self.say(self.note)
        elif epoch < trainer.epochs and per_epoch > left:  # slower than first measured: stop inside the budget
            self.decided = trainer.epochs = epoch
            self.note += f"; stopped after epoch {epoch}, as later epochs ran slower"
            self.say(f"budget {self.seconds:.0f}s: stopped after epoch {epoch}, as later epochs ran slower")

    def state_dict(self) -> dict:
        return {"decided": self.decided, "spent": self.spent(), "note": self.note}

    def load_state_dict(self, state: dict) -> None:
        self.decided, self.spent_before, self.note = state["decided"], state["spent"], state["note"]
