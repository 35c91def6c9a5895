"""Which backend runs a file: an export by its kind (ONNX, OpenVINO IR, TorchScript), else a PyTorch checkpoint."""

from __future__ import annotations

from pathlib import Path

from transferkit.inference.checkpoint_io import read_checkpoint
from transferkit.inference.ensemble import EnsemblePredictor, is_cv_folder
from transferkit.inference.onnx_predictor import OnnxPredictor
from transferkit.inference.openvino_predictor import OpenVinoPredictor
from transferkit.inference.predictor import Predictor
from transferkit.inference.torch_predictor import TorchPredictor
from transferkit.inference.torchscript_predictor import TorchScriptPredictor, is_torchscript


def is_export(path: str | Path) -> bool:
    """True for a file `transferkit export` writes: .onnx, an OpenVINO .xml, or a TorchScript archive."""
    path = Path(path).expanduser()
    return path.suffix.lower() in (".onnx", ".xml") or (path.is_file() and is_torchscript(path))


def load_predictor(path: str | Path, device: str = "auto", batch_size: int | None = None) -> Predictor:
    """The backend for a run directory or checkpoint (.pt: PyTorch), a file `export` wrote: ONNX (ONNX Runtime,
    fp32, fp16 or int8), OpenVINO IR (.xml) or TorchScript (torch.jit), or a `transferkit cv` folder (its folds'
    models averaged)."""
    path = Path(path).expanduser()
    if is_cv_folder(path):
        return EnsemblePredictor(path, device, batch_size)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxPredictor(path, device, batch_size)
    if suffix == ".xml":
        return OpenVinoPredictor(path, device, batch_size)
    if path.is_file() and is_torchscript(path):
        return TorchScriptPredictor(path, device, batch_size)
    return TorchPredictor(read_checkpoint(path), device, batch_size)
