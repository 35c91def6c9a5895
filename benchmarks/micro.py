"""Model-only micro-benchmarks behind transferkit's CPU defaults: channels_last, eval batch size, bf16.

    python benchmarks/micro.py channels-last [--threads N] [NAMES...]   # training step, both memory formats
    python benchmarks/micro.py eval-batch [NAMES...] [--size PX] [--batches B...]  # inference images/s per batch
    python benchmarks/micro.py bf16 [NAMES...]                          # training step, fp32 vs bf16 autocast
    python benchmarks/micro.py allocator [NAMES...] [--sides ...]       # training step under each CPU allocator

Random-init networks on random tensors at 224 px; each figure is the best of interleaved rounds (allocator:
the median, each side and round a fresh process),
because other jobs on a shared machine only ever slow a round down.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

DEFAULT_NAMES = ["resnet18", "timm/tf_efficientnet_lite0"]
SURVEY = DEFAULT_NAMES + ["mobilenet_v3_large", "timm/convnext_atto", "timm/regnety_004", "resnet50",
                          "timm/vit_tiny_patch16_224"]


def network(name: str) -> nn.Module:
    """A torchvision model by name, or timm/<name>, with 10 classes and random weights."""
    if name.startswith("timm/"):
        return timm.create_model(name[5:], num_classes=10)
    return torchvision.models.get_model(name, num_classes=10)


def train_rate(model: nn.Module, x: torch.Tensor, bf16: bool = False, steps: int = 1) -> float:
    """Images/s of forward+backward+SGD step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    y = torch.randint(0, 10, (x.shape[0],))
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return x.shape[0] * steps / (time.perf_counter() - start)


def best_of(runs: dict, rounds: int) -> dict:
    """Call each (name -> zero-argument function) once as warm-up, then `rounds` times interleaved; best rate each."""
    for fn in runs.values():
        fn()
    rates = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            rates[name].append(fn())
    return {name: max(values) for name, values in rates.items()}


def channels_last(names: list[str], batch: int, rounds: int) -> None:
    """Training images/s in the default memory format and in channels_last."""
    print(f"{'backbone':<30}{'contiguous':>12}{'channels_last':>15}{'ratio':>8}")
    for name in names:
        runs = {}
        for fmt in (torch.contiguous_format, torch.channels_last):
            model = network(name).train().to(memory_format=fmt)
            x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
            runs[str(fmt)] = lambda model=model, x=x: train_rate(model, x)
        best = best_of(runs, rounds)
        c, cl = best[str(torch.contiguous_format)], best[str(torch.channels_last)]
        print(f"{name:<30}{c:>12.1f}{cl:>15.1f}{cl / c:>7.2f}x", flush=True)


def eval_batch(names: list[str], rounds: int, pixels: int = 224, sizes: tuple[int, ...] = (4, 8, 16, 32)) -> None:
    """Inference images/s (channels_last, no grad) at each batch size (default 4 to 32), `pixels` px."""
    print(f"{'backbone':<30}" + "".join(f"{'batch ' + str(s):>10}" for s in sizes))
    for name in names:
        model = network(name).eval().to(memory_format=torch.channels_last)

        def rate(size: int) -> float:
            x = torch.randn(size, 3, pixels, pixels).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                start, count = time.perf_counter(), 0
                while count < max(64, 2 * size):
                    model(x)
                    count += size
            return count / (time.perf_counter() - start)

        best = best_of({s: (lambda s=s: rate(s)) for s in sizes}, rounds)
        print(f"{name:<30}" + "".join(f"{best[s]:>10.1f}" for s in sizes), flush=True)


def bf16(names: list[str], batch: int, rounds: int) -> None:
    """Training images/s in channels_last, fp32 against bf16 autocast."""
    print(f"{'backbone':<30}{'fp32':>10}{'bf16':>10}{'ratio':>8}")
    for name in names:
        model = network(name).train().to(memory_format=torch.channels_last)
        x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        best = best_of({"fp32": lambda: train_rate(model, x), "bf16": lambda: train_rate(model, x, bf16=True)},
                       rounds)
        print(f"{name:<30}{best['fp32']:>10.1f}{best['bf16']:>10.1f}{best['bf16'] / best['fp32']:>7.2f}x", flush=True)


# side -> environment of its fresh process: LD_PRELOAD loads the library before anything else, with the
# settings PyTorch's CPU launcher (torch/backends/xeon/run_cpu.py) uses. The page pool (transferkit/native/,
# deleted 2026-12-04) was measured by this script at commit 27138c0.
JEMALLOC_RUN_CPU = "oversize_threshold:1,background_thread:true,metadata_thp:auto"  # run_cpu.py, torch 2.14
JEMALLOC_NO_DECAY = JEMALLOC_RUN_CPU + ",dirty_decay_ms:9000000000,muzzy_decay_ms:9000000000"  # PyTorch tuning guide
ALLOCATOR_SIDES = {
    "glibc": {"TRANSFERKIT_CPU_ALLOCATOR": "default"},
    "jemalloc": {"preload": "jemalloc", "MALLOC_CONF": JEMALLOC_RUN_CPU},
    "jemalloc-no-decay": {"preload": "jemalloc", "MALLOC_CONF": JEMALLOC_NO_DECAY},
    "jemalloc-defaults": {"preload": "jemalloc"},  # Debian's build as it is
    "tcmalloc": {"preload": "tcmalloc"},
}


def side_environment(side: str) -> dict:
    """os.environ with one allocator side's settings (LD_PRELOAD resolved to the library's path)."""
    from transferkit.cpu_memory import PACKAGES, PRELOADED, library

    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_CONF", "LD_PRELOAD", PRELOADED)}
    settings = dict(ALLOCATOR_SIDES[side])
    kind = settings.pop("preload", None)
    if kind:
        path = library(kind)
        if path is None:
            raise SystemExit(f"{kind}: not installed (Debian: apt-get install {PACKAGES[kind]})")
        settings["LD_PRELOAD"] = str(path)
    return {**env, **settings}


def allocator_child(name: str, batch: int, steps: int, warmup: int) -> None:
    """(In a fresh process) channels_last training steps under this process's allocator; print JSON: images/s,
    minor page faults per step, peak RSS, the allocator in force."""
    import json

    model = network(name).train().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    train_rate(model, x, steps=warmup)  # warm-up: the heap grows to its working size
    before = resource.getrusage(resource.RUSAGE_SELF)
    rate = train_rate(model, x, steps=steps)
    after = resource.getrusage(resource.RUSAGE_SELF)
    faults = (after.ru_minflt - before.ru_minflt) / steps
    # CPU seconds per image (user + system): what the step costs, less sensitive than img/s to other jobs
    cpu = {"cpu_ms_per_image": 1000 * (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
           / (steps * batch), "sys_ms_per_image": 1000 * (after.ru_stime - before.ru_stime) / (steps * batch)}
    maps = Path("/proc/self/maps").read_text()
    library = next((n for n in ("jemalloc", "tcmalloc") if f"lib{n}" in maps), "glibc")
    print(json.dumps({"images_per_s": rate, "faults_per_step": faults, "library": library, **cpu,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def allocator(names: list[str], batches: list[int], sides: list[str], rounds: int, threads: int | None, steps: int,
              warmup: int, out: str | None) -> dict:
    """Training images/s and peak RSS under each allocator side, a fresh process per side and round, sides
    interleaved round by round (A B C, A B C, ...); medians, and ratios to the first side."""
    import json
    import statistics

    report = {"command": " ".join(["python", "benchmarks/micro.py", *sys.argv[1:]]), "torch": torch.__version__,
              "threads": threads or torch.get_num_threads(), "steps": steps, "warmup": warmup, "rounds": rounds,
              "sides": {s: ALLOCATOR_SIDES[s] for s in sides}, "results": []}
    for batch in batches:
        for name in names:
            runs = {side: [] for side in sides}
            loads = [load_average()]
            for _ in range(rounds):
                for side in sides:
                    command = [sys.executable, __file__, "allocator-child", name, "--batch", str(batch),
                               "--steps", str(steps), "--warmup", str(warmup),
                               *(["--threads", str(threads)] if threads else [])]
                    result = subprocess.run(command, check=True, capture_output=True, text=True,
                                            env=side_environment(side))
                    runs[side].append(json.loads(result.stdout.strip().splitlines()[-1]))
                loads.append(load_average())
            row = {"backbone": name, "batch": batch, "load_average": loads, "sides": {}}
            for side in sides:
                rates = [r["images_per_s"] for r in runs[side]]
                rss = [r["peak_rss_mib"] for r in runs[side]]
                row["sides"][side] = {"images_per_s": statistics.median(rates), "peak_rss_mib": statistics.median(rss),
                                      "faults_per_step": statistics.median(r["faults_per_step"] for r in runs[side]),
                                      "cpu_ms_per_image": statistics.median(r["cpu_ms_per_image"] for r in runs[side]),
                                      "sys_ms_per_image": statistics.median(r["sys_ms_per_image"] for r in runs[side]),
                                      "library": runs[side][0]["library"], "runs": runs[side]}
            base = row["sides"][sides[0]]
            print(f"\n{name}, batch {batch}, load average {' -> '.join(f'{x:.1f}' for x in loads)}")
            print(f"  {'side':<20}{'img/s':>8}{'x ' + sides[0]:>10}{'peak RSS MiB':>14}{'x ' + sides[0]:>10}"
                  f"{'faults/step':>13}{'CPU ms/img':>12}{'sys ms/img':>12}  library")
            for side, r in row["sides"].items():
                print(f"  {side:<20}{r['images_per_s']:>8.2f}{r['images_per_s'] / base['images_per_s']:>9.2f}x"
                      f"{r['peak_rss_mib']:>14.0f}{r['peak_rss_mib'] / base['peak_rss_mib']:>9.2f}x"
                      f"{r['faults_per_step']:>13.0f}{r['cpu_ms_per_image']:>12.1f}{r['sys_ms_per_image']:>12.1f}  {r['library']}",
                      flush=True)
            report["results"].append(row)
            if out:
                Path(out).write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["channels-last", "eval-batch", "bf16", "allocator", "allocator-child"])
    parser.add_argument("names", nargs="*", help=f"backbones (default {' '.join(DEFAULT_NAMES)}; 'survey' for more)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own, one per core)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="allocator: timed steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="allocator: untimed steps first, per process")
    parser.add_argument("--batches", type=int, nargs="+", help="allocator: batch sizes (default --batch); "
                        "eval-batch: the batch sizes (default 4 8 16 32)")
    parser.add_argument("--size", type=int, default=224, help="eval-batch: image side in pixels")
    parser.add_argument("--sides", nargs="+", choices=list(ALLOCATOR_SIDES), default=["glibc", "tcmalloc", "jemalloc",
                        "jemalloc-defaults"], help="allocator: sides, each in fresh processes; ratios are to the first")
    parser.add_argument("--json", help="allocator: write the results here (after each backbone and batch)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = SURVEY if args.names == ["survey"] else (args.names or DEFAULT_NAMES)
    if args.what == "allocator-child":
        return allocator_child(names[0], args.batch, args.steps, args.warmup)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.size} px")
    if args.what == "channels-last":
        channels_last(names, args.batch, args.rounds)
    elif args.what == "eval-batch":
        eval_batch(names, args.rounds, args.size, tuple(args.batches or (4, 8, 16, 32)))
    elif args.what == "allocator":
        allocator(names, args.batches or [args.batch], args.sides, args.rounds, args.threads, args.steps, args.warmup,
                  args.json)
    else:
        bf16(names, args.batch, args.rounds)


if __name__ == "__main__":
    main()
