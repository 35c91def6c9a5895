"""A transferkit plugin in one file, no core edit: a callback and a logger, found through the entry point.

tests/test_callbacks.py installs it with a dist-info whose entry_points.txt names this module.
"""

from __future__ import annotations

import json
import math

from pydantic import BaseModel

from transferkit.engine.callbacks import Callback, RunContext
from transferkit.files import atomic_write_text
from transferkit.registry import CALLBACKS, LOGGERS


class WeightNormOptions(BaseModel):
    """Settings of the weight_norm callback."""

    metric: str = "weight_norm"


@CALLBACKS.register("weight_norm", options=WeightNormOptions)
class WeightNorm(Callback):
    """Adds the L2 norm of the model's weights to every epoch's metrics."""

    def __init__(self, run: RunContext, options: WeightNormOptions):
        self.metric, self.epochs_seen = options.metric, 0

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        row[self.metric] = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in trainer.model.parameters()))
        self.epochs_seen += 1

    def state_dict(self) -> dict:
        return {"epochs_seen": self.epochs_seen}

    def load_state_dict(self, state: dict) -> None:
        self.epochs_seen = state["epochs_seen"]


class JsonLinesOptions(BaseModel):
    """Settings of the jsonlines logger."""

    filename: str = "events.jsonl"


@LOGGERS.register("jsonlines", options=JsonLinesOptions)
class JsonLines(Callback):
    """One JSON line per epoch in the run directory, and a last one naming the files the run left."""

    def __init__(self, run: RunContext, options: JsonLinesOptions):
        self.path, self.lines = run.run_dir / options.filename, []

    def _write(self, event: dict) -> None:
        self.lines.append(json.dumps(event))
        atomic_write_text(self.path, "\n".join(self.lines) + "\n")

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        self._write({"event": "epoch", "step": epoch, **row})

    def on_run_end(self, run_dir) -> None:
        self._write({"event": "run_end", "files": sorted(p.relative_to(run_dir).as_posix()
                                                         for p in run_dir.rglob("*") if p.is_file())})
