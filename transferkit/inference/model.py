"""`transferkit.load()`'s facade: a backend predictor with evaluate and export on top (nothing below imports it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from transferkit.errors import TransferkitError
from transferkit.inference.backends import load_predictor
from transferkit.inference.evaluate import Evaluation, evaluate_folder
from transferkit.inference.batches import expand_items
from transferkit.inference.explain import Explanation, explain
from transferkit.inference.export import ExportResult, export_model
from transferkit.inference.predictor import Prediction, Predictor
from transferkit.inference.torch_predictor import TorchPredictor


class Model:
    """A trained model ready to use: predict, evaluate on a labelled folder, export; the backend does the arithmetic."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def __getattr__(self, name: str):
        # the backend's own attributes (TorchPredictor.model and .checkpoint, OnnxPredictor.session, ...)
        if name == "predictor":
            raise AttributeError(name)
        return getattr(self.predictor, name)

    def __repr__(self) -> str:
        return f"Model({type(self.predictor).__name__}, {self.predictor.source}, {len(self.classes)} classes)"

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of the logits."""
        return self.predictor.classes

    @property
    def source(self) -> Path:
        """The checkpoint or ONNX file the model was read from."""
        return self.predictor.source

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """Class logits (N, C) of uint8 (N, 3, S, S) images."""
        return self.predictor.logits(images)

    def predict(self, inputs, top_k: int = 5) -> list[Prediction]:
        """Predictions for paths, PIL images or 0-255 tensors ((3, H, W) or (N, 3, H, W)); one per image."""
        return self.predictor.predict(inputs, top_k)

    def evaluate(self, folder: str | Path | None = None, split: str = "test", output: str | Path | None = None,
                 progress: bool = False) -> Evaluation:
        """Metrics, confusion matrix and misclassified files on a class-per-folder set, or (folder None) the run's
        own split; files are written when `output` is given (see inference.evaluate)."""
        return evaluate_folder(self.predictor, folder, split, output, progress=progress)

    def explain(self, inputs, layer: str | None = None, target: str | None = None) -> list[Explanation]:
        """Grad-CAM of paths, PIL images or 0-255 tensors, one Explanation each (its `heatmap`, `overlay`, what was
        explained); `layer` overrides the backbone's last spatial layer, `target` the predicted class (see
        inference.explain). PyTorch checkpoints only."""
        if not isinstance(self.predictor, TorchPredictor):
            raise TransferkitError(f"{self.source}: only a PyTorch checkpoint can be explained (Grad-CAM needs its "
                                   f"gradients); load the run directory it was exported from")
        items = expand_items(inputs if isinstance(inputs, (list, tuple)) else [inputs])
        return explain(self.predictor, items, layer, target)[1]

    def export(self, path: str | Path | None = None, format: str = "onnx", check: int | None = None,
               calibration: int | None = None, data: str | Path | None = None, overwrite: bool = False) -> ExportResult:
        """Write the model as onnx, onnx-fp16, onnx-int8, openvino or torchscript beside the checkpoint (or at
        `path`), checked against this one; int8 calibrates on `calibration` training images; an existing file is
        replaced only with `overwrite` (see inference.export)."""
        if not isinstance(self.predictor, TorchPredictor):
            raise TransferkitError(f"{self.source}: only a PyTorch checkpoint can be exported; "
                                   f"this is {self.source.suffix}")
        return export_model(self.predictor, format, path, check, calibration, data, overwrite)


def load(path: str | Path, device: str = "auto", batch_size: int | None = None) -> Model:
    """A model from a run directory, a checkpoint (.pt), a file `export` wrote (ONNX fp32/fp16/int8, OpenVINO IR,
    TorchScript), or a `transferkit cv` folder (the folds' ensemble); weights land on `device`."""
    return Model(load_predictor(path, device, batch_size))
