"""The predictor base: batching, overlapped decoding and top-k over a backend's logits; it imports none of its users."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from transferkit.inference.batches import ImageBatch, ImagePreparer, default_decode_threads, expand_items, read_batches
from transferkit.model.preprocess import Preprocessing
from transferkit.tasks import Task

if TYPE_CHECKING:
    from transferkit.inference.onnx_metadata import ExportedModel


@dataclass
class Prediction:
    """One input's answer, or its error. single_label: the best class, its probability and the top-k (class,
    probability) pairs; multi_label: `labels` (the set at or above the thresholds, joined in `label`), each label's
    probability in `scores`; regression: `values` by target name, in the targets' units."""

    source: str
    label: str | None
    probability: float | None
    top_k: list[tuple[str, float]]
    error: str | None = None
    labels: list[str] | None = None
    scores: dict[str, float] | None = None
    values: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        """True when the input was read and predicted."""
        return self.error is None

    def record(self) -> dict:
        """The answer as JSON-ready fields (label, probability, top_k and the task's labels, scores or values), as
        `predict --output x.jsonl` and `serve` write it."""
        record = {"label": self.label, "probability": self.probability,
                  "top_k": [{"label": label, "probability": prob} for label, prob in self.top_k]}
        record.update({key: value for key, value in (("labels", self.labels), ("scores", self.scores),
                                                     ("values", self.values)) if value is not None})
        return record


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, so each row sums to 1 to within rounding."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def describe_item(item, position: int) -> str:
    """A path as given, or '<image N>' for an in-memory image."""
    return str(item) if isinstance(item, (str, Path)) else f"<image {position}>"


class Predictor:
    """Shared by every backend: batching, overlapped decoding, top-k; a backend supplies `logits`."""

    classes: list[str]  # the head's outputs: classes, labels or target names
    format: str = "pytorch"  # or the export format: onnx, onnx-fp16, onnx-int8, openvino, torchscript
    task: Task
    preprocessing: Preprocessing
    recipe: dict
    source: Path
    device: torch.device
    batch_size: int
    decode_threads: int

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """Class logits (N, C) of uint8 (N, 3, S, S) images."""
        raise NotImplementedError

    def adopt_export(self, exported: "ExportedModel", batch_size: int | None, decode_threads: int | None) -> None:
        """An exported file's backend: classes, preprocessing, recipe, task and format from its metadata; a batch
        of 8 on the CPU (64 elsewhere) and the device's decoding threads unless given."""
        self.classes, self.preprocessing = exported.classes, exported.preprocessing
        self.recipe, self.task, self.format = exported.recipe, exported.task, exported.format
        self.batch_size = batch_size or (8 if self.device.type == "cpu" else 64)
        self.decode_threads = decode_threads or default_decode_threads(self.device)

    def scored_batches(self, items: list) -> Iterator[tuple[ImageBatch, np.ndarray]]:
        """Each batch of `items` with its logits, in input order; unreadable items carry their error."""
        prepare = ImagePreparer(self.preprocessing)
        for batch in read_batches(items, prepare, self.batch_size, self.decode_threads):
            logits = self.logits(batch.images) if batch.positions else np.zeros((0, len(self.classes)), np.float32)
            yield batch, logits

    def prediction_batches(self, items: list, top_k: int = 5) -> Iterator[list[Prediction]]:
        """Predictions batch by batch, one per item, in input order (for writing as they come)."""
        k = max(1, min(top_k, len(self.classes)))
        for batch, logits in self.scored_batches(items):
            sources = [describe_item(items[position], position) for position in batch.positions]
            rows = dict(zip(batch.positions, self.answer_rows(logits, sources, k)))
            for position, error in batch.errors.items():
                rows[position] = Prediction(describe_item(items[position], position), None, None, [], error)
            yield [rows[p] for p in sorted(rows)]

    def answer_rows(self, logits: np.ndarray, sources: list[str], top_k: int) -> list[Prediction]:
        """The task's answer for each row of `logits` (N, C), named by `sources`."""
        answers = self.task.answers(logits) if len(sources) else []
        return [Prediction(source, **{"top_k": [], **self.task.answer(row, top_k)})
                for source, row in zip(sources, answers)]

    def predict(self, inputs, top_k: int = 5) -> list[Prediction]:
        """Predictions for paths, PIL images or 0-255 tensors ((3, H, W) or (N, 3, H, W)); one per image."""
        items = expand_items(inputs if isinstance(inputs, (list, tuple)) else [inputs])
        return [p for batch in self.prediction_batches(items, top_k) for p in batch]
