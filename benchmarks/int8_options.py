"""Which ONNX Runtime quantization settings make int8 fast and accurate on this CPU: measured, not guessed.

    flock /tmp/transferkit-bench.lock python benchmarks/int8_options.py RUN_DIR [--calibration 200] [--json OUT]

RUN_DIR is a trained run (EfficientNet-Lite0 on clothing-small for the figures in docs/performance.md). The fp32
ONNX export is quantized once per variant of `Int8Options` (QDQ or QOperator, per-channel or per-tensor weights,
u8/s8 activations, reduced range, calibration method, the head quantized or not, with or without ORT's
pre-processing) on the same calibration images from the run's training split; then every variant and the fp32
file are measured in the same process, in alternating rounds: images/s at batch 32, batch-1 latency, top-1 accuracy
on the run's test split and agreement with the PyTorch model. For each, the graph ONNX Runtime actually runs
(after its own optimisations) is saved and its operators counted, to see which convolutions run in int8.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transferkit.inference.checkpoint_io import read_checkpoint  # noqa: E402
from transferkit.inference.export import Exporter, run_images  # noqa: E402
from transferkit.inference.export_int8 import Int8Options, write_int8  # noqa: E402
from transferkit.inference.onnx_predictor import OnnxPredictor, onnxruntime  # noqa: E402
from transferkit.inference.torch_predictor import TorchPredictor  # noqa: E402
from transferkit.run.benchmark import BenchmarkSettings, labelled_images, measure_speed  # noqa: E402

BASE = Int8Options()
VARIANTS = {
    "default (QDQ, per-channel, u8s8, MinMax, head fp32)": BASE,
    "per-tensor weights": replace(BASE, per_channel=False),
    "QOperator": replace(BASE, quant_format="QOperator"),
    "s8s8": replace(BASE, activation_type="QInt8"),
    "reduce_range": replace(BASE, reduce_range=True),
    "MinMax moving average": replace(BASE, extra_options=(("CalibMovingAverage", True),)),
    "Entropy calibration": replace(BASE, calibrate_method="Entropy"),
    "Percentile calibration": replace(BASE, calibrate_method="Percentile"),
    "head quantized too": replace(BASE, head_in_fp32=False),
    "no quant_pre_process": replace(BASE, pre_process=False),
}


class _Bar:
    def advance(self, steps: int = 1) -> None:
        pass


def runtime_ops(path: Path) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime runs after its optimisations (what is int8 and what is not)."""
    import onnx

    ort = onnxruntime()
    with tempfile.TemporaryDirectory() as work:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(work) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    counts = Counter(node.op_type for node in graph.node)
    return dict(counts.most_common())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--calibration", type=int, default=200)
    parser.add_argument("--variants", nargs="*", help="names (default: every min-max one: ORT's Entropy and "
                        "Percentile calibrations hold every activation of every image, 13.7 GB at 200 images here)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--no-speed", action="store_true", help="accuracy and operators only (no lock needed)")
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).parent / "results" / f"deploy-export_int8_options_{date.today()}.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    reference = TorchPredictor(read_checkpoint(args.run), "cpu")
    images, targets, where = labelled_images(reference, None, None)
    expected = np.concatenate([reference.logits(part) for part in images.split(32)])
    calibration, _ = run_images(reference, "train", args.calibration)
    names = args.variants or [name for name, options in VARIANTS.items() if options.calibrate_method == "MinMax"]
    variants = {name: VARIANTS[name] for name in names}
    rows = {}
    with Exporter(reference, check=0) as exporter, tempfile.TemporaryDirectory() as work:
        fp32 = exporter.fp32_onnx()
        files = {"fp32": fp32}
        for i, (name, options) in enumerate(variants.items()):
            path = Path(work) / f"variant{i}.onnx"
            started = time.perf_counter()
            write_int8(fp32, path, exporter.metadata("onnx-int8"), calibration, options)
            rows[name] = {"options": asdict(options), "quantize_s": round(time.perf_counter() - started, 1)}
            files[name] = path
            print(f"quantized: {name} ({rows[name]['quantize_s']} s)", flush=True)
        rows["fp32"] = {"options": None}
        predictors = {name: OnnxPredictor(path, "cpu") for name, path in files.items()}
        for name, predictor in predictors.items():
            got = np.concatenate([predictor.logits(part) for part in images.split(32)])
            rows[name].update(size_bytes=files[name].stat().st_size, ops=runtime_ops(files[name]),
                              accuracy=float(np.mean(got.argmax(1) == targets)),
                              agreement=float(np.mean(got.argmax(1) == expected.argmax(1))),
                              max_probability_difference=float(reference.task.agreement(got, expected)))
        settings = BenchmarkSettings(rounds=args.rounds)
        speed = {} if args.no_speed else measure_speed(predictors, images, settings, _Bar())
        for name in rows:
            rows[name].update(speed.get(name, {"images_per_s": float("nan"), "latency_p50_ms": float("nan")}))
    fp32_speed = rows["fp32"]["images_per_s"]
    print(f"{'variant':52} {'img/s':>7} {'x fp32':>6} {'p50 ms':>7} {'acc':>6} {'agree':>6} {'max dp':>6} "
          f"{'QLinearConv':>11} {'fp32 Conv':>9}")
    for name, row in rows.items():
        ops = row["ops"]
        int8_convs = ops.get("QLinearConv", 0)
        fp_convs = ops.get("Conv", 0) + ops.get("FusedConv", 0) + ops.get("NchwcConv", 0)
        print(f"{name:52} {row['images_per_s']:7.1f} {row['images_per_s'] / fp32_speed:6.2f} "
              f"{row['latency_p50_ms']:7.1f} {row['accuracy']:6.3f} {row['agreement']:6.3f} "
              f"{row['max_probability_difference']:6.3f} {int8_convs:11d} "
              f"{fp_convs:9d}")
    report = {"date": str(date.today()), "run": str(args.run), "data": where, "images": len(images),
              "calibration_images": len(calibration), "threads": os.cpu_count(), "batch": settings.batch,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
