"""An exported ONNX model run with ONNX Runtime: classes and preprocessing from its metadata, no checkpoint or recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from transferkit.errors import TransferkitError
from transferkit.model.checkpoint_format import CheckpointError
from transferkit.inference.onnx_metadata import read_export_metadata
from transferkit.inference.predictor import Predictor

INSTALL_HINT = "install the export extra: pip install 'transferkit[export]'"


def onnxruntime():
    """The onnxruntime module, or a one-line error saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise TransferkitError(f"ONNX Runtime is not installed; {INSTALL_HINT}") from None
    ort.set_default_logger_severity(3)  # its warnings (e.g. unused initializers) are not the user's to fix
    return ort


def providers_for(device: str, available: list[str]) -> tuple[list[str], torch.device]:
    """ONNX Runtime execution providers for 'auto', 'cpu' or 'cuda[:N]'."""
    if device == "cpu" or (device == "auto" and "CUDAExecutionProvider" not in available):
        return ["CPUExecutionProvider"], torch.device("cpu")
    if device.startswith("cuda") or device == "auto":
        if "CUDAExecutionProvider" not in available:
            raise TransferkitError(f"--device {device}: this ONNX Runtime has no CUDA provider "
                                   f"(it has {', '.join(available)}); use --device cpu or install onnxruntime-gpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], torch.device("cuda")
    raise TransferkitError(f"--device {device}: ONNX models run on auto, cpu or cuda")


class OnnxPredictor(Predictor):
    """Predicts with an ONNX file written by `transferkit export`; the same answers as its checkpoint."""

    def __init__(self, path: str | Path, device: str = "auto", batch_size: int | None = None,
                 decode_threads: int | None = None):
        ort = onnxruntime()
        self.source = Path(path).expanduser()
        if not self.source.is_file():
            raise TransferkitError(f"{self.source}: ONNX file not found; check the path or run `transferkit export`")
        providers, self.device = providers_for(str(device), ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(self.source), providers=providers)
        except Exception as exc:  # onnxruntime raises its own classes for bad protobuf, missing ops, bad graphs
            reason = " ".join(str(exc).split())[:200]
            raise CheckpointError(f"{self.source}: not a readable ONNX model ({reason}); export it again") from None
        exported = read_export_metadata(self.session.get_modelmeta().custom_metadata_map, self.source, "ONNX")
        self.input_name = self.session.get_inputs()[0].name
        self.adopt_export(exported, batch_size, decode_threads)

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """Class logits (N, C) of uint8 (N, 3, S, S) images, from ONNX Runtime."""
        return self.session.run(None, {self.input_name: images.numpy().astype(np.float32)})[0]
