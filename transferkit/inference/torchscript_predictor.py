"""A TorchScript file written by `transferkit export --format torchscript`, run with torch.jit: classes,
preprocessing and task from its `transferkit.json` extra file, no checkpoint or recipe."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from transferkit.device import resolve_device
from transferkit.errors import TransferkitError
from transferkit.model.checkpoint_format import CheckpointError
from transferkit.inference.onnx_metadata import TORCHSCRIPT_METADATA, read_export_metadata
from transferkit.inference.predictor import Predictor


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive: a zip holding `constants.pkl` and `code/` (torch.save writes neither)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


class TorchScriptPredictor(Predictor):
    """Predicts with a TorchScript file written by `transferkit export`; the same answers as its checkpoint."""

    def __init__(self, path: str | Path, device: str = "auto", batch_size: int | None = None,
                 decode_threads: int | None = None):
        self.source = Path(path).expanduser()
        if not self.source.is_file():
            raise TransferkitError(f"{self.source}: TorchScript file not found; check the path or run "
                                   f"`transferkit export --format torchscript`")
        self.device = resolve_device(device)
        extra = {TORCHSCRIPT_METADATA: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit announces its deprecation
                self.module = torch.jit.load(str(self.source), map_location=self.device, _extra_files=extra).eval()
        except Exception as exc:  # torch.jit raises RuntimeError subclasses of its own for damaged archives
            reason = " ".join(str(exc).split())[:200]
            raise CheckpointError(f"{self.source}: not a readable TorchScript file ({reason}); export it again") from None
        raw = extra[TORCHSCRIPT_METADATA]
        meta = json.loads(raw) if raw else {}
        exported = read_export_metadata(meta, self.source, "TorchScript")
        self.adopt_export(exported, batch_size, decode_threads)

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """Class logits (N, C) of uint8 (N, 3, S, S) images, from the TorchScript module (it takes 0-255 floats)."""
        with torch.inference_mode():
            return self.module(images.to(self.device).float()).float().cpu().numpy()
