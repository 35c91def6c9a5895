"""The export formats: each one's default file, the tolerance its check enforces, and what it needs installed."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from transferkit.errors import TransferkitError
from transferkit.rundir import EXPORTS

EXPORT_EXTRA = "pip install 'transferkit[export]'"


@dataclass(frozen=True)
class ExportFormat:
    """One format `transferkit export` writes; its check against the PyTorch model must stay inside the tolerance."""

    name: str
    description: str
    max_difference: float  # largest allowed difference of any answer (probability; regression: standardised value)
    min_agreement: float  # smallest allowed fraction of check images with PyTorch's top answer
    modules: tuple[str, ...]  # what writing and running it imports
    install: str  # the one line that installs them

    @property
    def file(self) -> str:
        """The default file name in a run directory."""
        return EXPORTS[self.name]

    @property
    def lossless(self) -> bool:
        """True when the format computes in fp32 like the checkpoint (its answers match to rounding)."""
        return self.min_agreement >= 1.0

    def missing(self) -> str | None:
        """None when every module it needs imports, else '<modules> not installed: <the line that installs them>'."""
        absent = []
        for module in self.modules:
            try:
                importlib.import_module(module)
            except ImportError:
                absent.append(module)
        return f"{', '.join(absent)} not installed: {self.install}" if absent else None

    def tolerance(self) -> str:
        """The tolerance in words, as the docs and the check's messages state it."""
        agreement = "every check image" if self.lossless else f"at least {self.min_agreement:.0%} of the check images"
        return f"probabilities within {self.max_difference:g}, same top answer on {agreement}"


ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")
FORMATS = {f.name: f for f in (
    ExportFormat("onnx", "ONNX fp32, run with ONNX Runtime", 1e-4, 1.0, ONNX_MODULES, EXPORT_EXTRA),
    ExportFormat("onnx-fp16", "ONNX with fp16 weights and arithmetic (fp32 inputs and outputs)", 1e-2, 0.95,
                 ONNX_MODULES + ("onnxconverter_common",), EXPORT_EXTRA),
    ExportFormat("onnx-int8", "ONNX statically quantized to int8 (QDQ, calibrated on training images)", 0.35, 0.9,
                 ONNX_MODULES, EXPORT_EXTRA),
    ExportFormat("openvino", "OpenVINO IR (model.openvino.xml + .bin), fp32", 1e-4, 1.0, ONNX_MODULES + ("openvino",),
                 "pip install 'transferkit[export,openvino]'"),
    ExportFormat("torchscript", "TorchScript (torch.jit.trace), run with torch.jit", 1e-4, 1.0, (), "(ships with torch)"),
)}


def export_format(name: str) -> ExportFormat:
    """The format called `name`, or a one-line error listing them."""
    if name not in FORMATS:
        raise TransferkitError(f"--format {name}: use one of {', '.join(FORMATS)}")
    return FORMATS[name]
