"""Per-epoch metrics: metrics.json and metrics.csv in the run directory, and one line on the console."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable

from transferkit.engine.callbacks import Callback
from transferkit.files import atomic_write_text
from transferkit.rundir import RunDir


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.json and metrics.csv, one row per epoch."""
    files = RunDir(run_dir)
    atomic_write_text(files.metrics_json, json.dumps(history, indent=2))
    if not history:
        return
    columns = list(dict.fromkeys(key for row in history for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(files.metrics_csv, out.getvalue())


class MetricsLog(Callback):
    """Hands each epoch's row to `line`, then rewrites metrics.json/.csv (atomically); before the checkpoints, so
    the finished epoch is on screen even when its checkpoint cannot be written."""

    order = 45

    def __init__(self, run_dir: Path, line: Callable[[dict], None], write_files: bool = True):
        self.run_dir, self.line, self.write_files = run_dir, line, write_files

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        self.line(row)
        if self.write_files:
            write_metrics(self.run_dir, trainer.history)
