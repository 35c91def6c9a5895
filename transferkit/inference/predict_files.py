"""`predict` over files: one row per input, written and flushed batch by batch to CSV or JSON Lines."""

from __future__ import annotations

import csv
import io
import json
import sys
import contextlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rich.console import Console

from transferkit.errors import TransferkitError
from transferkit.files import refused, write_error
from transferkit.inference.feedback import feedback
from transferkit.inference.predictor import Prediction, Predictor

FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


@dataclass
class PredictSummary:
    """How many inputs were predicted and how many could not be read."""

    predicted: int = 0
    failed: int = 0


def output_format(output: Path | None) -> str:
    """'csv' or 'jsonl' from the output file's extension (CSV on standard output)."""
    if output is None:
        return "csv"
    fmt = FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise TransferkitError(f"--output {output}: use a .csv or .jsonl file name")
    return fmt


class RowWriter:
    """Writes predictions as CSV (path, the task's columns, error) or JSON Lines. single_label's columns are label,
    probability, label_1, probability_1, ...; multi_label's labels and p_<label>; regression's the target names."""

    def __init__(self, handle: TextIO, fmt: str, top_k: int, task, path: Path | None = None):
        self.handle, self.fmt, self.top_k, self.task, self.path = handle, fmt, top_k, task, path
        self.buffer = io.StringIO()
        if fmt == "csv":
            self.csv = csv.writer(self.buffer)
            self.csv.writerow(["path", *task.prediction_columns(top_k), "error"])
            self._flush()

    def _flush(self) -> None:
        chunk = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        try:
            self.handle.write(chunk)
            self.handle.flush()
        except OSError as exc:
            if refused(exc) and self.path is not None:
                raise write_error(self.path, len(chunk.encode("utf-8")), exc) from exc
            raise

    def write(self, predictions: list[Prediction]) -> None:
        """Write the rows and flush, so a crash later loses none of them."""
        for p in predictions:
            if self.fmt == "csv":
                self.csv.writerow([p.source, *self.task.prediction_cells(p, self.top_k), p.error or ""])
            else:
                self.buffer.write(json.dumps({"path": p.source, **p.record(), "error": p.error}) + "\n")
        self._flush()


@contextmanager
def open_output(output: Path | None, overwrite: bool):
    """The final file itself (rows land as they are written), or standard output; refuses to replace a file."""
    if output is None:
        yield sys.stdout
        return
    if output.exists() and not overwrite:
        raise TransferkitError(f"--output {output}: file exists; choose another name or add --overwrite")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        handle = open(output, "w", newline="", encoding="utf-8")
    except OSError as exc:
        if refused(exc):
            raise write_error(output, None, exc) from exc
        raise
    try:
        yield handle
    except BaseException:
        with contextlib.suppress(OSError):  # rows that could not be written would fail again on close
            handle.close()
        raise
    handle.close()


def predict_to_file(predictor: Predictor, paths: list[Path], output: Path | None, top_k: int,
                    console: Console, overwrite: bool = False, progress: bool = True) -> PredictSummary:
    """Predict every path, writing one row each as batches finish; unreadable files get their error in the row."""
    fmt = output_format(output)
    k = max(1, min(top_k, len(predictor.classes)))
    summary = PredictSummary()
    with open_output(output, overwrite) as handle, feedback(console, "predict", len(paths), progress) as bar:
        writer = RowWriter(handle, fmt, k, predictor.task, output)
        for predictions in predictor.prediction_batches(paths, k):
            writer.write(predictions)
            failed = sum(not p.ok for p in predictions)
            summary.failed += failed
            summary.predicted += len(predictions) - failed
            bar.advance(len(predictions))
    return summary
