"""Per-epoch metrics: metrics.json and metrics.csv in the run directory, and one line on the console."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from transferkit.engine.callbacks import Callback
from transferkit.files import write_metrics


class MetricsLog(Callback):
    """Rewrites metrics.json/.csv (atomically) after every epoch and hands each row to `line`."""

    order = 60

    def __init__(self, run_dir: Path, line: Callable[[dict], None], write_files: bool = True):
        self.run_dir, self.line, self.write_files = run_dir, line, write_files

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        if self.write_files:
            write_metrics(self.run_dir, trainer.history)
        self.line(row)
