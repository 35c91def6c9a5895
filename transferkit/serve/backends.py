"""Which runtime serves which model file: one row per backend, so a new runtime is one line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transferkit.errors import TransferkitError


@dataclass(frozen=True)
class Backend:
    """A runtime `serve --backend` can name, and the model files it runs (by suffix; '' is a run directory or
    checkpoint, resolved by `transferkit.load`)."""

    runtime: str
    files: str
    suffixes: tuple[str, ...]
    export_format: str | None  # the `transferkit export --format` that writes its file, when a checkpoint is given


BACKENDS = {
    "torch": Backend("PyTorch", "run directories, checkpoints, TorchScript", ("", ".pt", ".pth"), "torchscript"),
    "onnx": Backend("ONNX Runtime", ".onnx files", (".onnx",), "onnx"),
    "openvino": Backend("OpenVINO", "OpenVINO IR .xml files", (".xml",), "openvino"),
}


def backend_for(model: str | Path) -> str:
    """The backend that runs `model`'s file: by its suffix, torch for run directories and checkpoints."""
    suffix = Path(model).suffix.lower()
    return next((name for name, backend in BACKENDS.items() if suffix in backend.suffixes), "torch")


def check_backend(model: str | Path, requested: str | None) -> str:
    """The backend to use: `requested` when it runs `model`'s file, else a one-line error with the fix."""
    found = backend_for(model)
    if requested is None or requested == found:
        return found
    if requested not in BACKENDS:
        raise TransferkitError(f"--backend {requested}: not available in this transferkit; use one of "
                               f"{', '.join(BACKENDS)} (or leave --backend out: the file decides)")
    fix = BACKENDS[requested].export_format
    how = (f"; write one with `transferkit export {model} --format {fix}` and serve that file"
           if found == "torch" and fix and requested != "torch" else "; leave --backend out, or give its file")
    raise TransferkitError(f"--backend {requested}: {model} is run by {found} ({BACKENDS[found].runtime}: "
                           f"{BACKENDS[found].files}); {requested} runs {BACKENDS[requested].files}{how}")
