"""ONNX files: the fp32 export from PyTorch, and its fp16 conversion; the metadata goes into `metadata_props`."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from transferkit.errors import TransferkitError
from transferkit.inference.export_formats import EXPORT_EXTRA


def onnx_module():
    """The onnx module, or a one-line error saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise TransferkitError(f"ONNX export needs onnx, onnxscript and onnxruntime; {EXPORT_EXTRA}") from None
    return onnx


def save_with_metadata(proto, path: Path, metadata: dict[str, str]) -> None:
    """Replace the model's transferkit metadata_props with `metadata`, check the graph and save it to `path`."""
    onnx = onnx_module()
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for key, value in kept + list(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    """fp32 ONNX through torch.onnx's dynamo exporter, with a dynamic batch axis."""
    onnx = onnx_module()
    batch = torch.export.Dim("batch", min=1, max=65536)
    torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["images"], output_names=["logits"],
                      dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    save_with_metadata(onnx.load(str(path)), path, metadata)


def write_fp16(fp32: Path, path: Path, metadata: dict[str, str]) -> None:
    """fp16 weights and arithmetic from the fp32 ONNX file; inputs and outputs stay fp32, so callers do not change."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise TransferkitError(f"onnx-fp16 needs onnxconverter-common; {EXPORT_EXTRA}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # one line per weight too small for fp16, rounded to 1e-7
        proto = float16.convert_float_to_float16(onnx_module().load(str(fp32)), keep_io_types=True)
    save_with_metadata(proto, path, metadata)
