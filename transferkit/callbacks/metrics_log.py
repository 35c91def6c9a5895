"""Per-epoch metrics: one line on the console, and metrics.json and metrics.csv in the run directory (the csv logger)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable

from transferkit.engine.callbacks import Callback, RunContext
from transferkit.files import atomic_write_text
from transferkit.registry import LOGGERS
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


class EpochLine(Callback):
    """Hands each epoch's row, with what the callbacks added to it, and the run's number of epochs as it stands
    now (a budget may have cut it) to `line` (the console line of every run)."""

    def __init__(self, line: Callable[[dict, int], None]):
        self.line = line

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        self.line(row, trainer.epochs)


@LOGGERS.register("csv")
class MetricsFiles(Callback):
    """metrics.json and metrics.csv in the run directory, one row per epoch, rewritten atomically after each."""

    def __init__(self, run: RunContext, options=None):
        self.run_dir = run.run_dir

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        write_metrics(self.run_dir, trainer.history)
