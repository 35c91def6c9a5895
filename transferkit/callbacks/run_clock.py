"""The run's clock across processes: what the earlier processes of a resumed run spent, kept in last.pt."""

from __future__ import annotations

import time

from transferkit.engine.callbacks import Callback, RunContext


class RunClock(Callback):
    """Wall, setup and linear-probe seconds of the whole run: this process's (from `started`; setup and probe as the
    experiment measured them) plus what earlier processes of a resumed run spent, saved with each checkpoint."""

    def __init__(self, started: float):
        self.started = started
        self.setup = self.probe = 0.0  # this process's, set by the experiment before training
        self.before = {"wall": 0.0, "setup": 0.0, "probe": 0.0}

    @classmethod
    def from_run(cls, run: RunContext) -> "RunClock":
        """Always on, counted from the variant's start."""
        return cls(run.started)

    def totals(self) -> dict:
        """{"wall", "setup", "probe"}: seconds of the whole run so far."""
        return {"wall": self.before["wall"] + time.monotonic() - self.started,
                "setup": self.before["setup"] + self.setup, "probe": self.before["probe"] + self.probe}

    def state_dict(self) -> dict:
        return self.totals()

    def load_state_dict(self, state: dict) -> None:
        self.before = dict(state)
