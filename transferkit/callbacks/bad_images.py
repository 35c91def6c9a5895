"""Unreadable images left out under data.on_bad_image: skip, reported once each and remembered across a resume."""

from __future__ import annotations

from typing import Callable

from transferkit.engine.callbacks import Callback


class BadImageReport(Callback):
    """Prints each newly skipped file once and keeps the list for the summary."""

    order = 40

    def __init__(self, notify: Callable[[str], None]):
        self.notify, self.skipped = notify, []

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        for bad in trainer.last_bad:
            if bad.path not in self.skipped:
                self.skipped.append(bad.path)
                self.notify(bad.message)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = list(state["skipped"])
