"""Unreadable images left out under data.on_bad_image: skip, reported once each and remembered across a resume."""

from __future__ import annotations

from typing import Callable

from transferkit.data.images import SKIP_HINT
from transferkit.engine.callbacks import Callback, RunContext


class BadImageReport(Callback):
    """Prints each newly skipped file once and keeps the list for the summary."""

    def __init__(self, notify: Callable[[str], None]):
        self.notify, self.skipped = notify, []

    @classmethod
    def from_run(cls, run: RunContext) -> "BadImageReport | None":
        """On the primary process, which speaks for all."""
        if not run.placement.is_primary:
            return None
        return cls(lambda message: run.console.print(f"[yellow]skipped unreadable image[/] {message}",
                                                     highlight=False))

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        for bad in trainer.last_bad:
            if bad.path not in self.skipped:
                self.skipped.append(bad.path)
                self.notify(bad.message.removesuffix(SKIP_HINT))  # skipping already: the fix, not the hint

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = list(state["skipped"])
