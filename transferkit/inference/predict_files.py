"""`predict` over files: one row per input, written and flushed batch by batch to CSV or JSON Lines."""

from __future__ import annotations

import csv
import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rich.console import Console

from transferkit.errors import TransferkitError
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

    def __init__(self, handle: TextIO, fmt: str, top_k: int, task):
        self.handle, self.fmt, self.top_k, self.task = handle, fmt, top_k, task
        if fmt == "csv":
            self.csv = csv.writer(handle)
            self.csv.writerow(["path", *task.prediction_columns(top_k), "error"])

    def write(self, predictions: list[Prediction]) -> None:
        """Write the rows and flush, so a crash later loses none of them."""
        for p in predictions:
            if self.fmt == "csv":
                self.csv.writerow([p.source, *self.task.prediction_cells(p, self.top_k), p.error or ""])
            else:
                record = {"path": p.source, "label": p.label, "probability": p.probability,
                          "top_k": [{"label": label, "probability": prob} for label, prob in p.top_k]}
                record.update({key: value for key, value in (("labels", p.labels), ("scores", p.scores),
                                                             ("values", p.values)) if value is not None})
                self.handle.write(json.dumps({**record, "error": p.error}) + "\n")
        self.handle.flush()


@contextmanager
def open_output(output: Path | None, overwrite: bool):
    """The final file itself (rows land as they are written), or standard output; refuses to replace a file."""
    if output is None:
        yield sys.stdout
        return
    if output.exists() and not overwrite:
        raise TransferkitError(f"--output {output}: file exists; choose another name or add --overwrite")
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="", encoding="utf-8") as handle:
        yield handle


def predict_to_file(predictor: Predictor, paths: list[Path], output: Path | None, top_k: int,
                    console: Console, overwrite: bool = False, progress: bool = True) -> PredictSummary:
    """Predict every path, writing one row each as batches finish; unreadable files get their error in the row."""
    fmt = output_format(output)
    k = max(1, min(top_k, len(predictor.classes)))
    summary = PredictSummary()
    with open_output(output, overwrite) as handle, feedback(console, "predict", len(paths), progress) as bar:
        writer = RowWriter(handle, fmt, k, predictor.task)
        for predictions in predictor.prediction_batches(paths, k):
            writer.write(predictions)
            failed = sum(not p.ok for p in predictions)
            summary.failed += failed
            summary.predicted += len(predictions) - failed
            bar.advance(len(predictions))
    return summary
