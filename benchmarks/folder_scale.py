"""transferkit against the plain loop on a folder of N synthetic photos: whole-process wall time and peak memory.

    python benchmarks/folder_scale.py --train 20000 [--test 2000] [--classes 10] [--epochs 2] [--batch-size 128]
        [--image-size 32] [--workers 2] [--sides plain transferkit baseline] [--baseline DIR] [--set KEY=VALUE]...
        [--rounds 1] [--data-root /work/scale-data] [--json OUT] [--warm-cache]
    python benchmarks/folder_scale.py --train 100000 --test 10000 --generate-only

The photos: `--train` and `--test` JPEGs of 500 x 375 (quality 85) in `--classes` class folders, written
once under `--data-root` (outside the repository) and reused while their `complete.json` is there. Each
is a function of (split, class, index) alone: a class colour with jitter, stripes whose angle and frequency
depend on the class, and sensor-like noise, so a network learns the classes and a JPEG costs what a photo costs
to decode. Generation refuses when the disk lacks twice the estimated size.

The sides, each a fresh process started from here, one after the other (`--rounds` alternates their order):
  plain        benchmarks/plain_loop.py in a process that imports no transferkit: torchvision's resnet18 from
               scratch, ImageFolder over the folder, DataLoader with `--workers` workers (2: what the issue
               measured), the head at 10x the LR, SGD; a test pass after each epoch.
  transferkit  `transferkit run` (the CLI, allocator preload included) on the equivalent recipe
               (throughput.py's: same network, batch, size, optimizer, LR policy and epochs), all images.
  baseline     the same with another version of transferkit (`--baseline DIR`), e.g. before a change.
Before each transferkit run its decoded-image disk cache under the data folder (if any) is deleted unless
`--warm-cache`, so every run pays what a first run pays.

What is measured, for the process and all its descendants (the allocator re-exec, DataLoader workers):
  wall_seconds             from start to exit, as the parent sees it (imports and start-up included);
  peak_tree_footprint_mib  the highest footprint of the tree, sampled every 0.25 s from /proc/PID/smaps_rollup:
                           every process's private pages plus the root process's shared ones, so a page a
                           forked worker shares with its parent counts once and no page is split with
                           unrelated processes (the goal's measure);
  max_rss_mib              ru_maxrss from wait4: the largest single process of the tree, as the kernel counts
                           it (what /usr/bin/time -v prints, and what the issue measured); not sampled, so no
                           peak between samples is missed;
  peak_tree_pss_mib        the highest summed PSS, same samples: shared pages divided among every process
                           mapping them, other users' included, so it moves with what else runs;
  peak_tree_rss_mib        the highest summed VmRSS, same samples: shared pages counted in each process;
  cpu_seconds              user + system CPU of the whole tree (wait4's rusage).
The load average before and after each side is recorded beside it (the machine is shared). transferkit's
own split of its time (setup, data wait, steps, evaluation) and its data plan come from its run folder.
The JSON goes to benchmarks/results/folder_scale_<N>k_<date>.json (`--json` to choose).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from memory import _children  # noqa: E402

WIDTH, HEIGHT = 500, 375
NOISE_SIDE = 1024  # one noise field, cut at a different offset for every photo


# --- the photos ---------------------------------------------------------------------------------------

def _noise():
    import numpy as np

    global _NOISE
    if "_NOISE" not in globals():
        _NOISE = np.random.default_rng(12345).normal(0, 14, (NOISE_SIDE, NOISE_SIDE, 3)).astype(np.float32)
    return _NOISE


def photo(split: str, label: int, index: int, classes: int):
    """The (HEIGHT, WIDTH, 3) uint8 photo number `index` of class `label` in `split`: always the same pixels."""
    import numpy as np

    rng = np.random.default_rng([{"train": 0, "test": 1}[split], label, index])
    hue = (label + rng.normal(0, 0.12)) / classes % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.45 + 0.3 * rng.random(), 0.45 + 0.4 * rng.random()), np.float32)
    angle = math.pi * ((label * 3) % classes) / classes + rng.normal(0, 0.25)
    frequency = (0.012 + 0.04 * ((label * 7) % classes) / classes) * (1 + rng.normal(0, 0.1))
    y, x = np.ogrid[0:HEIGHT, 0:WIDTH]
    stripes = np.sin(2 * math.pi * frequency * (x * math.cos(angle) + y * math.sin(angle)) + rng.uniform(0, 2 * math.pi))
    top, left = rng.integers(0, NOISE_SIDE - HEIGHT), rng.integers(0, NOISE_SIDE - WIDTH)
    pixels = colour * 255 + (40 * stripes.astype(np.float32))[..., None] + _noise()[top:top + HEIGHT, left:left + WIDTH]
    return pixels.clip(0, 255).astype(np.uint8)


def _write(job: tuple) -> int:
    """Write one photo (atomically: a partial file never has a .jpg name); its size in bytes."""
    from PIL import Image

    path, split, label, index, classes = job
    if not path.is_file():
        tmp = path.with_suffix(".part")
        Image.fromarray(photo(split, label, index, classes)).save(tmp, "JPEG", quality=85)
        os.replace(tmp, path)
    return path.stat().st_size


def _jobs(folder: Path, split: str, count: int, classes: int) -> list[tuple]:
    jobs = []
    for label in range(classes):
        class_dir = folder / split / f"class{label:02d}"
        class_dir.mkdir(parents=True, exist_ok=True)
        per_class = count // classes + (label < count % classes)
        jobs += [(class_dir / f"{index:06d}.jpg", split, label, index, classes) for index in range(per_class)]
    return jobs


def ensure_photos(data_root: Path, train: int, test: int, classes: int) -> Path:
    """The folder of synthetic photos for these counts, written now unless already complete."""
    folder = data_root / f"photos-{train}-{test}-c{classes}"
    marker = folder / "complete.json"
    if marker.is_file():
        return folder
    sample = [_write_sample(label, classes) for label in range(classes)]
    need = sum(sample) / len(sample) * (train + test)
    data_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(data_root).free
    if need * 2 > free:
        raise SystemExit(f"{data_root}: {train + test} photos need about {need / 1e9:.1f} GB and the disk has "
                         f"{free / 1e9:.1f} GB free (twice the need is asked); choose another --data-root")
    print(f"writing {train + test} photos (about {need / 1e9:.1f} GB) into {folder} ...", flush=True)
    start, total = time.perf_counter(), 0
    jobs = _jobs(folder, "train", train, classes) + _jobs(folder, "test", test, classes)
    with Pool(len(os.sched_getaffinity(0))) as pool:
        for done, size in enumerate(pool.imap_unordered(_write, jobs, chunksize=64), 1):
            total += size
            if done % 10000 == 0:
                print(f"  {done}/{len(jobs)}", flush=True)
    marker.write_text(json.dumps({"train": train, "test": test, "classes": classes, "width": WIDTH, "height": HEIGHT,
                                  "bytes": total, "seconds": round(time.perf_counter() - start, 1)}))
    return folder


def _write_sample(label: int, classes: int) -> int:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(photo("train", label, 10**6, classes)).save(buffer, "JPEG", quality=85)
    return buffer.tell()


# --- measuring a process tree -------------------------------------------------------------------------

def _rollup_kib(pid: int) -> dict[str, int]:
    """Rss, Pss, Private and Shared (clean + dirty) of one process in KiB, from /proc/PID/smaps_rollup."""
    fields: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return {"rss": fields.get("Rss", 0), "pss": fields.get("Pss", 0),
            "private": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
            "shared": fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0)}


def tree_memory_mib(root: int) -> dict[str, float]:
    """Of a process and all its descendants, in MiB: summed RSS, summed PSS, and the footprint (every process's
    private pages plus the root's shared ones: a forked worker's pages shared with its parent count once, and
    unlike PSS no page is divided with unrelated processes that map the same libraries)."""
    totals = {"rss": 0, "pss": 0, "footprint": 0}
    todo = [root]
    while todo:
        pid = todo.pop()
        fields = _rollup_kib(pid)
        if fields:
            totals["rss"] += fields["rss"]
            totals["pss"] += fields["pss"]
            totals["footprint"] += fields["private"] + (fields["shared"] if pid == root else 0)
        todo += _children(pid)
    return {key: value / 1024 for key, value in totals.items()}


class TreeSampler:
    """Peaks of `tree_memory_mib` of a process, sampled every `every` s on a thread, and a timeline."""

    def __init__(self, pid: int, every: float = 0.25, keep_every: int = 8):
        self.pid, self.every, self.keep_every = pid, every, keep_every
        self.peak = {"rss": 0.0, "pss": 0.0, "footprint": 0.0}
        self.timeline: list[tuple[float, int, int, int]] = []  # (seconds, footprint, PSS, RSS) in MiB, every 2 s
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        count = 0
        while not self._stop.is_set():
            now = tree_memory_mib(self.pid)
            self.peak = {key: max(value, now[key]) for key, value in self.peak.items()}
            if count % self.keep_every == 0 and now["rss"]:
                self.timeline.append((round(time.perf_counter() - self._start, 1), round(now["footprint"]),
                                      round(now["pss"]), round(now["rss"])))
            count += 1
            self._stop.wait(self.every)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, as `uptime` prints them."""
    return [round(x, 2) for x in os.getloadavg()]


def measured(command: list[str], env: dict, log: Path) -> dict:
    """Run `command` to its end in the log's folder (so `python -m` imports nothing from the working directory);
    its wall time, peak memory (see the module's doc), CPU and load averages."""
    before = load_average()
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
        sampler = TreeSampler(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    sampler.stop()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"{command[:4]}... exited with {process.returncode}; its output is above")
    return {"wall_seconds": round(wall, 1), "peak_tree_footprint_mib": round(sampler.peak["footprint"]),
            "peak_tree_pss_mib": round(sampler.peak["pss"]), "peak_tree_rss_mib": round(sampler.peak["rss"]),
            "max_rss_mib": round(usage.ru_maxrss / 1024),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1), "load_before": before,
            "load_after": load_average(), "memory_timeline": sampler.timeline}


# --- the sides ----------------------------------------------------------------------------------------

def recipe(data: Path, args) -> dict:
    """throughput.py's recipe (ResNet-18 from scratch) on every image of the folder."""
    import throughput

    settings = argparse.Namespace(image_size=args.image_size, batch_size=args.batch_size, limit=None,
                                  epochs=args.epochs)
    return throughput.recipe(str(data), "resnet18", settings)


def plain_settings(raw: dict, classes: int, workers: int) -> dict:
    """What the plain process needs of the recipe: sizes and normalisation as transferkit resolves them, optimizer."""
    from transferkit.model.build import build_model
    from transferkit.recipe.load import validate

    spec = validate(raw)
    prep = build_model(spec, classes).preprocessing
    return {"data": raw["data"]["root"], "classes": classes, "seed": raw["seed"], "epochs": spec.train.epochs,
            "batch_size": spec.data.batch_size, "workers": workers, "input_size": prep.input_size,
            "resize_size": prep.resize_size, "interpolation": prep.interpolation, "mean": list(prep.mean),
            "std": list(prep.std), "lr": spec.optimizer.lr, "momentum": spec.optimizer.momentum,
            "weight_decay": spec.optimizer.weight_decay, "head_multiplier": raw["lr_policy"]["multiplier"]}


def plain_child(settings: dict, out: str) -> None:
    """The plain side's process: torch, torchvision and plain_loop.py only."""
    import torch
    import torchvision

    from plain_loop import folder, plain_loop, transforms

    s = settings
    torch.manual_seed(s["seed"])
    net = torchvision.models.resnet18(num_classes=s["classes"])
    head = [p for p in net.fc.parameters()]
    body = [p for name, p in net.named_parameters() if not name.startswith("fc.")]
    groups = [{"params": body, "lr": s["lr"]}, {"params": head, "lr": s["lr"] * s["head_multiplier"]}]
    train_augs, test_augs = transforms(s["input_size"], s["resize_size"], s["interpolation"], s["mean"], s["std"])
    start = time.perf_counter()
    train_set, test_set = folder(Path(s["data"]) / "train", train_augs), folder(Path(s["data"]) / "test", test_augs)
    scan = time.perf_counter() - start
    result = plain_loop(net, groups, train_set, test_set, s["epochs"], s["batch_size"], s["lr"], s["momentum"],
                        s["weight_decay"], s["workers"])
    Path(out).write_text(json.dumps({**result, "scan_seconds": scan}))


def run_plain(settings: dict, scratch: Path) -> dict:
    """The plain loop in a fresh process (glibc's malloc, as a plain `python` has it)."""
    out = scratch / "plain.json"
    row = measured([sys.executable, __file__, "--plain-child", json.dumps(settings), str(out)], dict(os.environ),
                   scratch / "plain.log")
    return {"side": "plain", **row, **json.loads(out.read_text())}


def run_transferkit(raw: dict, scratch: Path, warm_cache: bool, code: Path | None = None,
                    overrides: list[str] = ()) -> dict:
    """`transferkit run` on the recipe in a fresh process; its time split and data plan from the run folder.
    With `code`, transferkit is imported from that folder (another version: the side is then "baseline")."""
    import yaml

    cache = Path(raw["data"]["root"]) / ".transferkit-cache"
    if cache.exists() and not warm_cache:
        shutil.rmtree(cache)
    recipe_file, out = scratch / "recipe.yaml", scratch / "runs"
    recipe_file.write_text(yaml.safe_dump(raw))
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(code or REPO))
    row = measured([sys.executable, "-m", "transferkit.cli", "run", str(recipe_file), "--output", str(out),
                    "--no-progress", *(arg for item in overrides for arg in ("--set", item))], env,
                   scratch / "transferkit.log")
    variant = next(p.parent for p in out.rglob("summary.json"))
    summary = json.loads((variant / "summary.json").read_text())
    history = json.loads((variant / "metrics.json").read_text())
    return {"side": "baseline" if code else "transferkit", **row, "time": summary.get("time", {}),
            "test_accuracy": history[-1].get("test_accuracy"),
            "data_plan": json.loads((variant / "data_plan.json").read_text()),
            "log_tail": (scratch / "transferkit.log").read_text().splitlines()[-12:]}


def summarise(rows: list[dict]) -> dict:
    """Per transferkit side, ratios of the best (lowest) wall time and peak memory over the rounds: plain / side for
    time, side / plain for memory."""
    def best(side: str, key: str) -> float:
        return min(r[key] for r in rows if r["side"] == side)
    sides = {r["side"] for r in rows}
    if "plain" not in sides:
        return {}
    return {side: {"speedup": round(best("plain", "wall_seconds") / best(side, "wall_seconds"), 3),
                   **{f"memory_ratio_{key.removeprefix('peak_').removesuffix('_mib')}":
                      round(best(side, key) / best("plain", key), 3)
                      for key in ("peak_tree_footprint_mib", "max_rss_mib", "peak_tree_pss_mib", "peak_tree_rss_mib")}}
            for side in sorted(sides - {"plain"})}


def print_row(row: dict) -> None:
    """One side's figures on a line, transferkit's time split on the next."""
    print(f"  {row['side']:<12} {row['wall_seconds']:7.0f} s  footprint {row['peak_tree_footprint_mib'] / 1024:5.2f} GiB  "
          f"largest process {row['max_rss_mib'] / 1024:5.2f} GiB  tree PSS {row['peak_tree_pss_mib'] / 1024:5.2f} GiB  "
          f"tree RSS {row['peak_tree_rss_mib'] / 1024:5.2f} GiB  "
          f"CPU {row['cpu_seconds']:.0f} s  test acc {row.get('test_accuracy') or 0:.3f}  "
          f"load {row['load_before'][0]:.1f} -> {row['load_after'][0]:.1f}", flush=True)
    t = row.get("time")
    if t:
        print(f"  {'':<12} setup {t['setup_seconds']:.0f} s, steps {t['train_step_seconds']:.0f} s, data wait "
              f"{t['data_wait_seconds']:.0f} s, evaluation {t['evaluation_seconds']:.0f} s; "
              f"{row['data_plan'].get('reasons')}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    """Generate (or reuse) the photos, run the sides, print the figures and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=20000, help="training photos")
    parser.add_argument("--test", type=int, help="test photos (default a tenth of --train)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--data-root", type=Path, default=Path("/work/scale-data"), help="where the photos are kept")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="the plain loop's DataLoader workers")
    parser.add_argument("--sides", nargs="+", default=["plain", "transferkit"], choices=["plain", "transferkit", "baseline"])
    parser.add_argument("--baseline", type=Path, help="a folder holding another version's transferkit/ package, for "
                        "the side 'baseline' (e.g. `git archive COMMIT transferkit | tar -x -C DIR`)")
    parser.add_argument("--rounds", type=int, default=1, help="run the sides this many times, alternating the order")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for the transferkit sides (repeatable), e.g. data.num_workers=1")
    parser.add_argument("--warm-cache", action="store_true", help="keep transferkit's disk cache between runs")
    parser.add_argument("--generate-only", action="store_true", help="write the photos and stop")
    parser.add_argument("--json", type=Path, help="where the results go (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    args.test = args.test or args.train // 10
    folder = ensure_photos(args.data_root, args.train, args.test, args.classes)
    if args.generate_only:
        return {}
    raw = recipe(folder, args)
    settings = plain_settings(raw, args.classes, args.workers)
    import platform

    import torch

    report = {"command": " ".join(["python", "benchmarks/folder_scale.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d %H:%M"), "photos": json.loads((folder / "complete.json").read_text()),
              "folder": str(folder), "recipe": raw, "plain_settings": settings,
              "cores": len(os.sched_getaffinity(0)), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") *
                                                                        os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
              "torch": torch.__version__, "platform": platform.platform(), "rows": []}
    print(f"{args.train} train / {args.test} test photos of {WIDTH}x{HEIGHT} in {args.classes} classes, resnet18 "
          f"from scratch at {args.image_size} px, batch {args.batch_size}, {args.epochs} epochs", flush=True)
    with tempfile.TemporaryDirectory(prefix="folder-scale-") as tmp:
        for round_ in range(args.rounds):
            for side in (args.sides if round_ % 2 == 0 else args.sides[::-1]):
                row = (run_plain(settings, Path(tmp)) if side == "plain"
                       else run_transferkit(raw, Path(tmp), args.warm_cache, args.baseline if side == "baseline" else None,
                                            args.overrides))
                report["rows"].append({"round": round_, **row})
                print_row(row)
    report["summary"] = summarise(report["rows"])
    print(f"plain / side wall time, side / plain memory: {report['summary']}")
    path = args.json or HERE / "results" / f"folder_scale_{args.train // 1000}k_{time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"written {path}")
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--plain-child":
        plain_child(json.loads(sys.argv[2]), sys.argv[3])
    else:
        main()
