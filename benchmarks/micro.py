"""Model-only micro-benchmarks behind transferkit's CPU defaults: channels_last, eval batch size, bf16.

    python benchmarks/micro.py channels-last [--threads N] [NAMES...]   # training step, both memory formats
    python benchmarks/micro.py eval-batch [NAMES...]                    # inference images/s per batch size
    python benchmarks/micro.py bf16 [NAMES...]                          # training step, fp32 vs bf16 autocast
    python benchmarks/micro.py allocator [NAMES...]                     # training step under each CPU allocator mode

Random-init networks on random tensors at 224 px; each figure is the best of interleaved rounds,
because other jobs on a shared machine only ever slow a round down.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

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


def eval_batch(names: list[str], rounds: int) -> None:
    """Inference images/s (channels_last, no grad) at batch sizes 4 to 32."""
    sizes = (4, 8, 16, 32)
    print(f"{'backbone':<30}" + "".join(f"{'batch ' + str(s):>10}" for s in sizes))
    for name in names:
        model = network(name).eval().to(memory_format=torch.channels_last)

        def rate(size: int) -> float:
            x = torch.randn(size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                start, count = time.perf_counter(), 0
                while count < 64:
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


MODES = {"default": "default", "kept": "heap", "huge": "huge-pages", "pool": "page-pool"}  # TRANSFERKIT_CPU_ALLOCATOR


def allocator_child(name: str, batch: int, steps: int) -> None:
    """(In a fresh process) channels_last training steps under the allocator mode TRANSFERKIT_CPU_ALLOCATOR names;
    print images/s, minor page faults per step and max RSS."""
    from transferkit.cpu_memory import configure_cpu_allocator

    wanted = os.environ.get("TRANSFERKIT_CPU_ALLOCATOR", "")
    mode = configure_cpu_allocator()  # before the first tensor: the huge-pages mode needs to come first
    assert wanted in ("", mode, "heap") and (wanted != "heap" or mode == "kept-heap"), f"{wanted}: got {mode}"
    model = network(name).train().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    train_rate(model, x, steps=2)  # warm-up: the heap grows to its working size
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rate = train_rate(model, x, steps=steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    print(f"{rate} {faults} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}")


def allocator(names: list[str], batch: int, rounds: int, threads: int | None, steps: int) -> None:
    """Training images/s with glibc's default malloc, the kept heap, huge pages and the page pool, fresh processes."""
    columns = list(MODES)
    print(f"{'backbone':<30}" + "".join(f"{c:>9}" for c in columns) + f"{'pool/kept':>11}"
          + "".join(f"{'faults ' + c:>16}" for c in columns) + "".join(f"{'RSS MiB ' + c:>17}" for c in columns))
    for name in names:
        best = {c: [0.0, 0.0, 0.0] for c in columns}
        for _ in range(rounds):
            for column in columns:
                command = [sys.executable, __file__, "allocator-child", name, "--batch", str(batch), "--steps", str(steps),
                           *(["--threads", str(threads)] if threads else [])]
                env = {**os.environ, "TRANSFERKIT_CPU_ALLOCATOR": MODES[column]}
                env.pop("THP_MEM_ALLOC_ENABLE", None)
                if column == "huge":  # torch (imported above, before the mode is set) reads it at its first allocation
                    env["THP_MEM_ALLOC_ENABLE"] = "1"
                result = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
                rate, faults, rss = map(float, result.stdout.split())
                if rate > best[column][0]:
                    best[column] = [rate, faults, rss]
        print(f"{name:<30}" + "".join(f"{best[c][0]:>9.1f}" for c in columns)
              + f"{best['pool'][0] / best['kept'][0]:>10.2f}x" + "".join(f"{best[c][1]:>16.0f}" for c in columns)
              + "".join(f"{best[c][2]:>17.0f}" for c in columns), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["channels-last", "eval-batch", "bf16", "allocator", "allocator-child"])
    parser.add_argument("names", nargs="*", help=f"backbones (default {' '.join(DEFAULT_NAMES)}; 'survey' for more)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own, one per core)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="allocator: timed steps per process")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = SURVEY if args.names == ["survey"] else (args.names or DEFAULT_NAMES)
    if args.what == "allocator-child":
        return allocator_child(names[0], args.batch, args.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, 224 px")
    if args.what == "channels-last":
        channels_last(names, args.batch, args.rounds)
    elif args.what == "eval-batch":
        eval_batch(names, args.rounds)
    elif args.what == "allocator":
        allocator(names, args.batch, args.rounds, args.threads, args.steps)
    else:
        bf16(names, args.batch, args.rounds)


if __name__ == "__main__":
    main()
