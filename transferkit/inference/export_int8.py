"""int8 ONNX: ONNX Runtime's static quantization of the fp32 export, calibrated on images of the run's training split."""

from __future__ import annotations

import tempfile
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


def write_int8(fp32: Path, path: Path, metadata: dict[str, str], images: torch.Tensor) -> None:
    """Static int8 (QDQ: quantize/dequantize pairs around each quantized operator, weights per output channel)
    from the fp32 ONNX file; activation ranges from `images` (uint8, N, 3, S, S) by min-max calibration."""
    q = quantization()
    input_name = onnx_module().load(str(fp32), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="transferkit-int8-") as work:
        prepared = Path(work) / "prepared.onnx"
        # shape inference and ORT's graph fusions first, so calibration and quantization see the final operators
        q.shape_inference.quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantized = Path(work) / "int8.onnx"
        q.quantize_static(str(prepared), str(quantized), calibration_reader(images, input_name),
                          quant_format=q.QuantFormat.QDQ, per_channel=True, activation_type=q.QuantType.QUInt8,
                          weight_type=q.QuantType.QInt8, calibrate_method=q.CalibrationMethod.MinMax,
                          nodes_to_exclude=head_nodes(onnx_module().load(str(prepared))),
                          extra_options={"CalibMaxIntermediateOutputs": CALIBRATION_FLUSH})
        save_with_metadata(onnx_module().load(str(quantized)), path, metadata)
