"""An OpenVINO IR written by `transferkit export --format openvino`, run with the OpenVINO runtime on the CPU: classes,
preprocessing and task from the IR's rt_info, no checkpoint or recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from transferkit.errors import TransferkitError
from transferkit.inference.export_openvino import openvino, read_rt_metadata
from transferkit.inference.onnx_metadata import read_export_metadata
from transferkit.inference.predictor import Predictor
from transferkit.model.checkpoint_format import CheckpointError


class OpenVinoPredictor(Predictor):
    """Predicts with an OpenVINO IR (.xml and its .bin); the same answers as its checkpoint."""

    def __init__(self, path: str | Path, device: str = "auto", batch_size: int | None = None,
                 decode_threads: int | None = None):
        ov = openvino()
        self.source = Path(path).expanduser()
        if not self.source.is_file():
            raise TransferkitError(f"{self.source}: OpenVINO IR not found; check the path or run "
                                   f"`transferkit export --format openvino`")
        if str(device) not in ("auto", "cpu"):
            raise TransferkitError(f"--device {device}: transferkit runs OpenVINO models on the CPU; use --device cpu")
        core = ov.Core()
        try:
            model = core.read_model(str(self.source))
        except Exception as exc:  # OpenVINO raises its own RuntimeError for a bad XML or a missing/short .bin
            reason = " ".join(str(exc).split())[:200]
            raise CheckpointError(f"{self.source}: not a readable OpenVINO IR ({reason}); export it again") from None
        exported = read_export_metadata(read_rt_metadata(model), self.source, "OpenVINO")
        # fp32 arithmetic: on CPUs with bf16 units OpenVINO would otherwise compute in bf16, off the checked answers
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()
        self.device = torch.device("cpu")
        self.adopt_export(exported, batch_size, decode_threads)

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """Class logits (N, C) of uint8 (N, 3, S, S) images, from the OpenVINO runtime."""
        result = self.request.infer({0: images.numpy().astype(np.float32)})
        return np.array(result[self.compiled.output(0)], copy=True)
