"""Predictors: a trained model with its classes and preprocessing, answering for files, PIL images or tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from transferkit.data.loading import default_eval_batch_size
from transferkit.device import resolve_device
from transferkit.errors import TransferkitError
from transferkit.inference.batches import ImageBatch, ImagePreparer, default_decode_threads, expand_items, read_batches
from transferkit.inference.checkpoint_io import Checkpoint, read_checkpoint
from transferkit.model.preprocess import Preprocessing


@dataclass
class Prediction:
    """One input's answer: the best label and its probability, the top-k (label, probability) pairs, or an error."""

    source: str
    label: str | None
    probability: float | None
    top_k: list[tuple[str, float]]
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the input was read and predicted."""
        return self.error is None


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

    classes: list[str]
    preprocessing: Preprocessing
    recipe: dict
    source: Path
    device: torch.device
    batch_size: int
    decode_threads: int

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """Class logits (N, C) of uint8 (N, 3, S, S) images."""
        raise NotImplementedError

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
            probabilities = softmax(logits)
            rows: dict[int, Prediction] = {}
            for position, error in batch.errors.items():
                rows[position] = Prediction(describe_item(items[position], position), None, None, [], error)
            for row, position in enumerate(batch.positions):
                order = np.argsort(-probabilities[row], kind="stable")[:k]
                top = [(self.classes[i], float(probabilities[row, i])) for i in order]
                rows[position] = Prediction(describe_item(items[position], position), top[0][0], top[0][1], top)
            yield [rows[p] for p in sorted(rows)]

    def predict(self, inputs, top_k: int = 5) -> list[Prediction]:
        """Predictions for paths, PIL images or 0-255 tensors ((3, H, W) or (N, 3, H, W)); one per image."""
        items = expand_items(inputs if isinstance(inputs, (list, tuple)) else [inputs])
        return [p for batch in self.prediction_batches(items, top_k) for p in batch]

    def evaluate(self, folder: str | Path | None = None, split: str = "test", output: str | Path | None = None,
                 progress: bool = False):
        """Metrics, confusion matrix and misclassified files on a class-per-folder set, or (folder None) the run's
        own split; files are written when `output` is given (see inference.evaluate)."""
        from transferkit.inference.evaluate import evaluate_folder

        return evaluate_folder(self, folder, split, output, progress=progress)

    def export(self, path: str | Path | None = None, format: str = "onnx", check: int | None = None):
        """Write the model as ONNX or TorchScript and check it against this one (see inference.export)."""
        raise TransferkitError(f"{self.source}: only a PyTorch checkpoint can be exported; this is {self.source.suffix}")


def channels_last_pays(model, device: torch.device) -> bool:
    """channels_last for convolutional models on CPU and CUDA, as training's `auto` chooses."""
    return bool(getattr(model, "is_convolutional", False)) and device.type in ("cpu", "cuda")


class TorchPredictor(Predictor):
    """A transferkit checkpoint's TransferModel, rebuilt without weight downloads, in eval mode on `device`."""

    def __init__(self, checkpoint: Checkpoint, device: str | torch.device = "auto", batch_size: int | None = None,
                 decode_threads: int | None = None):
        from transferkit.model.build import build_model
        from transferkit.plugins import load_plugins
        from transferkit.recipe.spec import ExperimentSpec

        load_plugins()  # a plugin may register the backbone
        self.checkpoint = checkpoint
        self.source = checkpoint.path
        self.classes = checkpoint.classes
        self.preprocessing = checkpoint.preprocessing
        self.recipe = checkpoint.recipe
        self.spec = ExperimentSpec.model_validate(checkpoint.recipe)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        model = build_model(self.spec, len(self.classes), pretrained=False).model
        try:
            model.load_state_dict(checkpoint.state_dict)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise TransferkitError(f"{self.source}: weights do not fit the recipe's model ({first}); "
                                   f"the checkpoint may come from another version of the recipe") from None
        self.channels_last = channels_last_pays(model, self.device)
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format).eval()
        self.batch_size = batch_size or default_eval_batch_size(self.device, 64)
        self.decode_threads = decode_threads or default_decode_threads(self.device)

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """Class logits (N, C) of uint8 (N, 3, S, S) images, in fp32."""
        with torch.inference_mode():
            x = images.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).float().cpu().numpy()

    def export(self, path: str | Path | None = None, format: str = "onnx", check: int | None = None):
        """Write the model as ONNX or TorchScript beside the checkpoint (or at `path`), checked against this one."""
        from transferkit.inference.export import export_model

        return export_model(self, format, path, check)


def load(path: str | Path, device: str = "auto", batch_size: int | None = None) -> Predictor:
    """A predictor from a run directory, a checkpoint (.pt) or an exported ONNX file; weights land on `device`."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".onnx":
        from transferkit.inference.onnx_predictor import OnnxPredictor

        return OnnxPredictor(path, device, batch_size)
    return TorchPredictor(read_checkpoint(path), device, batch_size)

