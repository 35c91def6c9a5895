"""int8 ONNX: ONNX Runtime's static quantization of the fp32 export, calibrated on images of the run's training split."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferkit.errors import TransferkitError
from transferkit.inference.export_formats import EXPORT_EXTRA
from transferkit.inference.export_onnx import onnx_module, save_with_metadata

CALIBRATION_BATCH = 8
CALIBRATION_FLUSH = 4  # batches whose activations ORT holds before folding them into the ranges (memory bound)
HEAD_OPS = {"Gemm", "MatMul", "Add", "Reshape", "Flatten", "Squeeze"}


def quantization():
    """onnxruntime.quantization, or a one-line error saying how to install it."""
    try:
        from onnxruntime import quantization
    except ImportError:
        raise TransferkitError(f"onnx-int8 needs ONNX Runtime; {EXPORT_EXTRA}") from None
    return quantization


def calibration_reader(images: torch.Tensor, input_name: str):
    """A CalibrationDataReader handing ONNX Runtime the uint8 calibration images in float32 batches."""

    class Reader(quantization().CalibrationDataReader):
        def __init__(self):
            self.batches = iter(images.split(CALIBRATION_BATCH))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch.float().numpy().astype(np.float32)}

    return Reader()


def head_nodes(proto) -> list[str]:
    """The nodes of the classifier head (the last Gemm/MatMul, its bias Add, reshapes), walking back from the output:
    left in fp32, so the logits, and with them the probabilities, are not rounded to 256 levels."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    names, frontier = [], [o.name for o in proto.graph.output]
    while frontier:
        node = producer.get(frontier.pop())
        if node is None or node.op_type not in HEAD_OPS or node.name in names:
            continue
        names.append(node.name)
        if node.op_type in ("Gemm", "MatMul"):
            continue  # the head's matrix product: the features below it are the backbone's
        frontier += list(node.input)
    return names


@dataclass(frozen=True)
class Int8Options:
    """How ONNX Runtime quantizes: the defaults are what `export --format onnx-int8` writes (why: docs/performance.md)."""

    quant_format: str = "QDQ"  # QDQ (quantize/dequantize pairs the runtime fuses) or QOperator (QLinearConv, ...)
    per_channel: bool = True  # a weight scale per output channel, not one per tensor
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    calibrate_method: str = "MinMax"  # MinMax, Entropy or Percentile
    reduce_range: bool = False  # 7-bit weights, for CPUs without VNNI
    pre_process: bool = True  # quant_pre_process: shape inference and ORT's graph fusions before quantizing
    head_in_fp32: bool = True  # leave the classifier head unquantized (see head_nodes)
    extra_options: tuple[tuple[str, object], ...] = ()

    def arguments(self, q, prepared) -> dict:
        """quantize_static's keyword arguments for these options."""
        return {"quant_format": getattr(q.QuantFormat, self.quant_format), "per_channel": self.per_channel,
                "activation_type": getattr(q.QuantType, self.activation_type),
                "weight_type": getattr(q.QuantType, self.weight_type), "reduce_range": self.reduce_range,
                "calibrate_method": getattr(q.CalibrationMethod, self.calibrate_method),
                "nodes_to_exclude": head_nodes(prepared) if self.head_in_fp32 else [],
                "extra_options": {"CalibMaxIntermediateOutputs": CALIBRATION_FLUSH, **dict(self.extra_options)}}


def write_int8(fp32: Path, path: Path, metadata: dict[str, str], images: torch.Tensor,
               options: Int8Options | None = None) -> None:
    """Static int8 from the fp32 ONNX file, activation ranges calibrated on `images` (uint8, N, 3, S, S); by
    default QDQ, weights per output channel, min-max ranges, the head in fp32."""
    q, onnx, options = quantization(), onnx_module(), options or Int8Options()
    input_name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="transferkit-int8-") as work:
        prepared = Path(work) / "prepared.onnx"
        if options.pre_process:
            q.shape_inference.quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        else:
            shutil.copyfile(fp32, prepared)
        quantized = Path(work) / "int8.onnx"
        q.quantize_static(str(prepared), str(quantized), calibration_reader(images, input_name),
                          **options.arguments(q, onnx.load(str(prepared))))
        save_with_metadata(onnx.load(str(quantized)), path, metadata)
