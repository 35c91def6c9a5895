"""GPU check: ResNet-18 model-only and end-to-end training images/s, fp32 against bf16 autocast + channels_last.

"workers" rows crop and flip on the CPU loader workers (data.augment_on: cpu, data.cache: memory);
"resident" rows (data.cache: device, data.augment_on: device; what auto picks on CUDA when the images fit):
training images decoded once and kept on the GPU, every batch gathered and cropped there. Each row also times the training loader alone
(batches on the device, cropped, no model): whichever of loader and model is slower bounds the run.
Each end-to-end run trains 3 epochs and reports the last one: steady state, caches warm.
The "DDP" row runs the same recipe as its plain row through `transferkit run --nproc 1` (torchrun, a
process group, DistributedDataParallel on the one GPU) and reports the distributed path's overhead.

Run through benchmarks/gpu_check.sh, which sets up the paths; `--smoke` runs the same code at tiny
sizes on the CPU. Every measurement is bounded: a fixed number of steps after warm-up, or a fixed
number of epochs over a synthetic JPEG folder this script writes itself.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from rich.console import Console

from transferkit.device import describe_device
from transferkit.engine.optimization import Optimization
from transferkit.run.assemble import assemble, build_variant
from transferkit.run.experiment import run_variant
from transferkit.optim.optimizers import build_optimizer
from transferkit.recipe.load import validate


def write_images(args: tuple[Path, int, int, int, tuple[int, int]]) -> None:
    """JPEGs `first`..`first + count - 1` of one class: smooth noise around a class colour, so the task is learnable."""
    folder, label, first, count, (width, height) = args
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([label, first])
    base = np.array([60 + 140 * label, 120, 200 - 140 * label])
    for i in range(first, first + count):
        small = rng.integers(-60, 60, size=(height // 8, width // 8, 3))
        noise = np.kron(small, np.ones((8, 8, 1)))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{label}_{i}.jpg", quality=90)


def make_data(root: Path, train: int, test: int, size: tuple[int, int], chunk: int = 250) -> Path:
    """root/{train,test}/{class0,class1}/*.jpg, written by one process per core."""
    jobs = [(root / split / f"class{label}", label, first, min(chunk, count - first), size)
            for split, count in (("train", train), ("test", test)) for label in (0, 1)
            for first in range(0, count, chunk)]
    with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:
        list(pool.map(write_images, jobs))
    return root


def recipe(root: Path, args, precision: str, channels_last: bool, compile_model: bool, cache: str = "auto",
           augment_on: str = "auto") -> dict:
    """ResNet-18 from random init (no download), the given precision, memory format, compile and augmentation switches."""
    return {
        "name": "gpu-check", "seed": 0, "backbone": {"name": "resnet18", "pretrained": False},
        "data": {"root": str(root), "image_size": args.image_size, "batch_size": args.batch_size, "cache": cache,
                 "augment_on": augment_on},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "lr_policy": {"name": "uniform"},
        "train": {"epochs": args.epochs, "device": args.device, "precision": precision,
                  "channels_last": channels_last, "compile": compile_model, "checkpoint": False},
    }


def model_only(raw: dict, args) -> dict:
    """Forward+backward+step images/s on uint8 tensors already on the device, after warm-up steps."""
    spec = validate(raw)
    built = build_variant(spec)
    device = torch.device(args.device)
    channels_last = spec.train.channels_last is True
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = built.model.to(device, memory_format=fmt)
    optimizer = build_optimizer(spec.optimizer, built.param_groups)
    images = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8,
                           device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, 2, (args.batch_size,), device=device)
    forward = torch.compile(model, dynamic=False) if spec.train.compile else model
    model.train()
    optimization = Optimization(optimizer, device=device, precision=spec.train.precision)

    def step():  # the engine's own step: autocast, loss, backward, scaler, update
        optimization.step(forward, images, labels, update=True)

    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync(device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return {"images_per_s": args.batch_size * args.steps / (time.perf_counter() - start), "warmup_seconds": warmup}


def loader_only(raw: dict, args, skip: int = 4) -> dict:
    """One epoch of the training loader alone, batches moved to the device (and cropped there if so set): images/s.

    The first `skip` batches (worker start-up) are not timed. Tells whether the data pipeline or the model limits a run.
    """
    spec = validate(raw)
    device = torch.device(args.device)
    parts = assemble(spec, Console(file=io.StringIO()), progress=False)
    trainer, train_loader = parts.trainer, parts.train_loader
    train_loader.sampler.set_epoch(1)
    skip = min(skip, len(train_loader) // 2)
    images, start = 0, None
    for i, batch in enumerate(train_loader):
        if i == skip:
            sync(device)
            start = time.perf_counter()
        x, _ = trainer.to_device(batch)
        if start is not None:
            images += x.shape[0]
    sync(device)
    del parts, trainer, train_loader
    return {"images_per_s": images / (time.perf_counter() - start)}


def end_to_end(raw: dict) -> dict:
    """`transferkit run`'s code path (run_variant) from the JPEG folder; images/s of each epoch's training loop."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = run_variant(validate(raw), "base", Path(out) / "base", Console(file=io.StringIO()), progress=False)
        wall = time.perf_counter() - start
    history = result.history
    return {"epoch_images_per_s": [row["train_images_per_s"] for row in history],
            "images_per_s": history[-1]["train_images_per_s"], "test_accuracy": history[-1]["test_accuracy"],
            "wall_seconds": wall}


def end_to_end_ddp(raw: dict) -> dict:
    """The same run as `end_to_end`, through `transferkit run --nproc 1` (torchrun + DDP) in a subprocess."""
    with tempfile.TemporaryDirectory() as out:
        recipe_file = Path(out) / "recipe.yaml"
        recipe_file.write_text(yaml.safe_dump(raw))
        env = {**os.environ, "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "transferkit", "run", str(recipe_file), "--output", out,
                               "--nproc", "1", "--no-progress"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"gpu_check: the DDP run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        history = json.loads((Path(out) / raw["name"] / "base" / "metrics.json").read_text())
    return {"epoch_images_per_s": [row["train_images_per_s"] for row in history],
            "images_per_s": history[-1]["train_images_per_s"], "test_accuracy": history[-1]["test_accuracy"],
            "wall_seconds": wall}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    """Parse the arguments, write the data, measure every row, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, to check the script itself")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--only", default="", help="run only the rows whose name contains this text (and no data.cache none row)")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.batch_size, args.image_size, args.epochs = "cpu", 8, 32, 2
        args.warmup, args.steps, train, test, size = 1, 2, 24, 8, (64, 48)
    else:
        args.device, args.batch_size, args.image_size, args.epochs = "cuda", 256, 224, 3
        args.warmup, args.steps, train, test, size = 5, 30, 4000, 100, (400, 300)
    amp = "bf16" if args.device == "cuda" else "fp32"  # CPU smoke runs keep fp32: it checks the script, not speed
    # (row name, precision, channels_last, compile, augment_on, cache). "resident": training images kept on the GPU
    # (data.cache: device) and cropped there, what auto picks on CUDA when they fit; "workers": crops on the CPU
    # loader workers. Both are named explicitly, so the smoke run on a CPU measures the same paths.
    resident, workers = ("device", "device"), ("cpu", "memory")
    configs = [("fp32, workers", "fp32", False, False, *workers), ("fp32, resident", "fp32", False, False, *resident),
               (f"{amp} + channels_last, workers", amp, True, False, *workers),
               (f"{amp} + channels_last, resident", amp, True, False, *resident)]
    if not args.no_compile:
        configs.append((f"{amp} + channels_last + compile, resident", amp, True, True, *resident))
    ddp_row = f"{amp} + channels_last, resident, DDP --nproc 1"
    configs.append((ddp_row, amp, True, False, *resident))
    configs = [c for c in configs if args.only in c[0]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    report = {"device": describe_device(device), "torch": torch.__version__, "cpu_cores": os.cpu_count(),
              "batch_size": args.batch_size, "image_size": args.image_size, "epochs": args.epochs,
              "train_images": 2 * train, "smoke": args.smoke, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TRANSFERKIT_DATA", str(Path(tmp) / "cache"))
        start = time.perf_counter()
        root = make_data(Path(tmp) / "data", train, test, size)
        report["data_seconds"] = time.perf_counter() - start
        print(f"{2 * train} train + {2 * test} test JPEGs of {size[0]}x{size[1]} written in "
              f"{report['data_seconds']:.1f}s; device {report['device']}", flush=True)
        model_rates: dict[tuple, dict] = {}  # the device-augment row shares its model-only run
        plain_runs: dict[tuple, dict] = {}  # the DDP row compares with its plain row's end-to-end run
        for name, precision, channels_last, compile_model, augment_on, cache in configs:
            raw = recipe(root, args, precision, channels_last, compile_model, cache=cache, augment_on=augment_on)
            key = (precision, channels_last, compile_model)
            if key not in model_rates:
                model_rates[key] = model_only(raw, args)
            plain_key = (*key, augment_on, cache)
            if name == ddp_row:
                if plain_key not in plain_runs:
                    plain_runs[plain_key] = end_to_end(raw)
                row = {"config": name, "augment_on": augment_on, "cache": cache, "model_only": model_rates[key],
                       "loader_only": loader_only(raw, args), "end_to_end": end_to_end_ddp(raw),
                       "plain_end_to_end": plain_runs[plain_key]}
                row["ddp_overhead"] = 1 - row["end_to_end"]["images_per_s"] / row["plain_end_to_end"]["images_per_s"]
            else:
                row = {"config": name, "augment_on": augment_on, "cache": cache, "model_only": model_rates[key],
                       "loader_only": loader_only(raw, args), "end_to_end": end_to_end(raw)}
                plain_runs[plain_key] = row["end_to_end"]
            row["efficiency"] = row["end_to_end"]["images_per_s"] / row["model_only"]["images_per_s"]
            report["rows"].append(row)
            print(f"  {name:<46} model-only {row['model_only']['images_per_s']:8.0f} img/s   loader-only "
                  f"{row['loader_only']['images_per_s']:8.0f} img/s   end-to-end "
                  f"{row['end_to_end']['images_per_s']:8.0f} img/s   efficiency {row['efficiency']:.2f}", flush=True)
        if not args.only:
            raw = recipe(root, args, amp, True, False, cache="none", augment_on="cpu")
            raw["train"]["epochs"] = 1  # decode-bound every epoch; one is enough to measure it
            report["end_to_end_without_image_cache"] = end_to_end(raw)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"\n{'config':<48}{'model-only img/s':>18}{'loader-only img/s':>18}{'end-to-end img/s':>18}{'efficiency':>12}")
    for row in report["rows"]:
        print(f"{row['config']:<48}{row['model_only']['images_per_s']:>18.0f}{row['loader_only']['images_per_s']:>18.0f}"
              f"{row['end_to_end']['images_per_s']:>18.0f}{row['efficiency']:>12.2f}")
    for row in report["rows"]:
        if "ddp_overhead" in row:
            print(f"{row['config']}: {row['end_to_end']['images_per_s']:.0f} img/s against "
                  f"{row['plain_end_to_end']['images_per_s']:.0f} img/s in one plain process: "
                  f"{100 * row['ddp_overhead']:.1f}% overhead")
    if "end_to_end_without_image_cache" in report:
        no_cache = report["end_to_end_without_image_cache"]["images_per_s"]
        print(f"{amp} + channels_last, workers, data.cache none: end-to-end {no_cache:.0f} img/s")
    print(f"written {out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
