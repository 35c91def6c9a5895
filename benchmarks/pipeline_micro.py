"""Micro-benchmarks behind the folder pipeline's changes for #19 (docs/performance.md, "The folder pipeline at scale").

    python benchmarks/pipeline_micro.py [--folders DIR...] [--rounds 2] [--json OUT]

  setup      a fresh process that builds everything `transferkit run` builds before its first step (recipe, folder
             scan, data plan, caches, model, loaders: `run.assemble`), against one that builds the plain loop's
             (ImageFolder for train and test, torchvision's resnet18, DataLoaders), on each folder (folder_scale.py's
             synthetic photos, e.g. 20k and 100k): wall time with imports, and peak memory (folder_scale's measures).
  scan       the training split's folder scan in this process: the code before 2026-12-07 (Path.rglob, a Path per
             file and relative_to) against data.folder.scan_split_folder (os.scandir with strings), on each folder:
             seconds and the peak of traced Python allocations (tracemalloc).
  optimizer  one SGD step (momentum 0.9, weight decay 1e-4) over ResNet-18's parameters with random gradients:
             PyTorch's default on the CPU against `fused=True` (what optim.optimizers.fused_on_cpu asks for).
  seeding    one per-sample seeding as ImageFileDataset does it: torch.random.fork_rng + torch.manual_seed before
             2026-12-07, against saving, seeding and restoring torch.default_generator.

Each figure is the best of `--rounds` interleaved rounds (other jobs only ever slow a round down).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

SETUP_TRANSFERKIT = """
import io, sys, time, yaml
from rich.console import Console
from transferkit.recipe.load import validate
from transferkit.run.assemble import assemble
parts = assemble(validate(yaml.safe_load(open(sys.argv[1]))), Console(file=io.StringIO()), progress=False)
plan = parts.plan
print(len(parts.splits.train), "images; train cache", plan.train_cache, plan.train_cache_bytes, "B; eval cache",
      plan.eval_cache, plan.eval_cache_bytes, "B;", plan.cache_fill)
"""

SETUP_PLAIN = """
import sys
from pathlib import Path
import torch, torchvision
from torch.utils.data import DataLoader
sys.path.insert(0, sys.argv[2])
from plain_loop import folder, transforms
train_augs, test_augs = transforms(32, 37, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
train, test = folder(Path(sys.argv[1]) / "train", train_augs), folder(Path(sys.argv[1]) / "test", test_augs)
net = torchvision.models.resnet18(num_classes=len(train.classes))
loaders = DataLoader(train, batch_size=128, shuffle=True, num_workers=2), DataLoader(test, batch_size=128, num_workers=2)
print(len(train), "plain")
"""


def setup(folders: list[Path], rounds: int) -> list[dict]:
    """Each side's set-up in a fresh process, per folder; the rows as folder_scale.measured gives them."""
    import yaml

    from folder_scale import measured

    rows = []
    with tempfile.TemporaryDirectory(prefix="pipeline-micro-") as tmp:
        scratch = Path(tmp)
        for folder in folders:
            raw = recipe(folder)
            (scratch / "recipe.yaml").write_text(yaml.safe_dump(raw))
            sides = {"transferkit": [sys.executable, "-c", SETUP_TRANSFERKIT, str(scratch / "recipe.yaml")],
                     "plain": [sys.executable, "-c", SETUP_PLAIN, str(folder), str(HERE)]}
            env = {"transferkit": dict(os.environ, PYTHONPATH=str(REPO)), "plain": dict(os.environ)}
            for round_ in range(rounds):
                for side in (["plain", "transferkit"] if round_ % 2 == 0 else ["transferkit", "plain"]):
                    row = measured(sides[side], env[side], scratch / f"{side}.log")
                    row.pop("memory_timeline")
                    rows.append({"measure": "setup", "folder": folder.name, "side": side, "round": round_, **row,
                                 "said": (scratch / f"{side}.log").read_text().strip().splitlines()[-1]})
                    print(f"  setup {folder.name} {side:<12} {row['wall_seconds']:6.1f} s  largest process "
                          f"{row['max_rss_mib']} MiB  footprint {row['peak_tree_footprint_mib']} MiB  "
                          f"load {row['load_before'][0]}", flush=True)
    return rows


def recipe(folder: Path) -> dict:
    """folder_scale.py's recipe (throughput.py's ResNet-18 from scratch at 32 px, batch 128, 2 epochs) on `folder`."""
    import throughput

    settings = argparse.Namespace(image_size=32, batch_size=128, limit=None, epochs=2)
    return throughput.recipe(str(folder), "resnet18", settings)


def scan_before(split_dir: Path, classes: list[str]) -> list[Path]:
    """The training split's images as data.folder found them before 2026-12-07 (the same rules and order)."""
    from transferkit.data.folder import IMAGE_EXTENSIONS

    images = []
    for name in classes:
        class_dir = split_dir / name
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
            if not any(part.startswith(".") for part in path.relative_to(class_dir).parts) \
                    and path.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(path)
    return images


def scan(folders: list[Path], rounds: int) -> list[dict]:
    """Seconds and traced peak allocation of the two scans of each folder's train/ split."""
    from transferkit.data.folder import scan_split_folder

    rows = []
    for folder in folders:
        split = folder / "train"
        classes = sorted(p.name for p in split.iterdir() if p.is_dir())
        ways = {"before (Path.rglob)": lambda: scan_before(split, classes),
                "now (os.scandir)": lambda: scan_split_folder(split, classes=classes).samples}
        best: dict[str, dict] = {}
        for round_ in range(rounds):
            for name in (list(ways) if round_ % 2 == 0 else list(ways)[::-1]):
                tracemalloc.start()
                start = time.perf_counter()
                found = ways[name]()
                seconds = time.perf_counter() - start
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                row = {"seconds": round(seconds, 2), "traced_peak_mib": round(peak / 2**20, 1), "files": len(found)}
                if name not in best or row["seconds"] < best[name]["seconds"]:
                    best[name] = row
        for name, row in best.items():
            rows.append({"measure": "scan", "folder": folder.name, "side": name, **row})
            print(f"  scan {folder.name} {name:<20} {row['seconds']:6.2f} s  traced peak {row['traced_peak_mib']} MiB "
                  f"({row['files']} files; tracing slows both)", flush=True)
    return rows


def optimizer(rounds: int, steps: int = 10) -> list[dict]:
    """Milliseconds per SGD step over ResNet-18's parameters, PyTorch's CPU default against fused."""
    import torch
    import torchvision

    net = torchvision.models.resnet18(num_classes=10)
    params = list(net.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    ways = {"default": {}, "fused": {"fused": True}}
    best = {name: float("inf") for name in ways}
    for round_ in range(rounds):
        for name in (list(ways) if round_ % 2 == 0 else list(ways)[::-1]):
            step = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4, **ways[name])
            step.step()  # the momentum buffers
            start = time.perf_counter()
            for _ in range(steps):
                step.step()
            best[name] = min(best[name], (time.perf_counter() - start) / steps * 1000)
    print(f"  optimizer step, ResNet-18 SGD: default {best['default']:.1f} ms, fused {best['fused']:.1f} ms "
          f"({best['default'] / best['fused']:.2f}x)", flush=True)
    return [{"measure": "optimizer", "side": name, "ms_per_step": round(ms, 2)} for name, ms in best.items()]


def seeding(rounds: int, samples: int = 2000) -> list[dict]:
    """Microseconds per sample of the two ways of seeding a sample's augmentation."""
    import torch

    def fork(seed: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)

    def save_restore(seed: int) -> None:
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        generator.set_state(state)

    ways = {"fork_rng + manual_seed": fork, "save, seed, restore": save_restore}
    best = {name: float("inf") for name in ways}
    for round_ in range(rounds):
        for name in (list(ways) if round_ % 2 == 0 else list(ways)[::-1]):
            start = time.perf_counter()
            for seed in range(samples):
                ways[name](seed)
            best[name] = min(best[name], (time.perf_counter() - start) / samples * 1e6)
    print("  seeding per sample: " + ", ".join(f"{name} {us:.0f} us" for name, us in best.items()), flush=True)
    return [{"measure": "seeding", "side": name, "us_per_sample": round(us, 1)} for name, us in best.items()]


def main() -> None:
    """Run the measures, print them and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", nargs="+", type=Path, default=[Path("/work/scale-data/photos-20000-2000-c10"),
                                                                    Path("/work/scale-data/photos-100000-10000-c10")])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--measures", nargs="+", default=["seeding", "optimizer", "scan", "setup"],
                        choices=["seeding", "optimizer", "scan", "setup"])
    parser.add_argument("--json", type=Path, help="default benchmarks/results/pipeline_micro_<date>.json")
    args = parser.parse_args()
    import torch

    report = {"command": " ".join(["python", "benchmarks/pipeline_micro.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "load_before": [round(x, 2) for x in os.getloadavg()], "rows": []}
    for measure in args.measures:
        work = globals()[measure]
        report["rows"] += work(args.folders, args.rounds) if measure in ("scan", "setup") else work(args.rounds)
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    path = args.json or HERE / "results" / f"pipeline_micro_{time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
