"""WebDataset shards (issue 23): memory, throughput, HTTP and two processes, on synthetic 64 px JPEGs it makes.

    flock /tmp/transferkit-bench.lock python benchmarks/shards.py [--sizes 10000 100000] [--rounds 3]
        [--work DIR] [--json OUT] [--photos DIR] [--workers 0 2] [--cache warm cold] [--batches N] [--photo-batches N]
        [--pipeline-batches N] [--ddp-epochs 3] [--skip throughput memory ddp]

--batches, --photo-batches and --pipeline-batches cut each pass to its first N batches, for a run of a few
minutes on a shared machine (the figures then say so).

1. Throughput of the training data pipeline alone (decode, random crop to 56 px, flip, batch of 64; no model),
   on the first size's images, each round: the folder pipeline (data.cache none: every epoch decodes, as
   streaming does), shards from local files, and the same shards from a local HTTP server on 127.0.0.1 (its
   own process), interleaved. Both with 0 loader workers (this CPU's default) and with 2; with the files in the
   page cache (warm, all of a 10k set fits), and evicted before every pass (cold: read from the disk, as a data
   set larger than the memory is; posix_fadvise DONTNEED, no privileges needed). Then the folder and
   local shards of the real clothing photos (400 x 534 JPEGs) cropped to 224 px, on one core.
2. Peak memory of a whole streamed training run (one epoch, a small CNN registered here so the data
   dominates, 0 workers) at every size, each in a fresh process: the kernel's ru_maxrss and the peak
   proportional set size of the process tree sampled every 0.2 s. With --pipeline-batches N: of the streamed
   training pipeline alone (index, shard reader, shuffle buffer, decoding, batches; no model) over N batches.
3. `torchrun --nproc-per-node 2` against one process on the shards of 2,000 of the images (--ddp-epochs, the
   same CNN): final metrics, beside one process with another seed (the spread of an equally valid order).

The images are made once per size under --work (default /tmp/transferkit-bench-shards) and kept.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLASSES = 10
SIDE, CROP, BATCH = 64, 56, 64


def make_images(root: Path, train: int, test: int) -> Path:
    """root/train/<class>/*.jpg and root/test/<class>/*.jpg, 64 px: a class tint under heavy noise (learnable,
    not trivially); made once (root/done marks a complete set)."""
    import numpy as np
    from PIL import Image

    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(0)
    tints = rng.integers(70, 186, size=(CLASSES, 3))
    for split, count in (("train", train), ("test", test)):
        for c in range(CLASSES):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            c = i % CLASSES
            pixels = np.clip(tints[c] + rng.integers(-70, 70, size=(SIDE, SIDE, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i:07d}.jpg", quality=90)
    (root / "done").write_text("ok")
    return root


def make_shards(photos: Path, out: Path, size: str = "4MB") -> Path:
    """`transferkit shard photos out --shard-size 4MB`, once."""
    from transferkit.run.shard import shard_target

    if not (out / "index.json").is_file():
        shard_target(str(photos), out, size)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_cnn_registered() -> None:
    """Register `bench_cnn`: two strided convolutions, so a training step costs little next to decoding."""
    from torch import nn

    from transferkit.model.backbones import Backbone
    from transferkit.model.preprocess import Preprocessing
    from transferkit.registry import BACKBONES

    if "bench_cnn" in BACKBONES:
        return

    @BACKBONES.register("bench_cnn")
    def bench_cnn(spec):
        """Two strided 3x3 convolutions and a global average pool: 32 features."""
        module = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                               nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return Backbone(module, 32, Preprocessing(input_size=CROP, resize_size=SIDE), "bench_cnn")


def stream_recipe(shards: Path, name: str, epochs: int, seed: int = 0, workers: int = 0) -> dict:
    """A recipe training bench_cnn from scratch on the shards in `shards` (urls from its index)."""
    from transferkit.data.shard_index import folder_recipe

    section, _ = folder_recipe(shards)
    section["data"].update(batch_size=BATCH, num_workers=workers, shuffle_buffer=1000)
    return {"name": name, "seed": seed, **section, "backbone": {"name": "bench_cnn", "pretrained": False},
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "lr_policy": {"name": "uniform"},
            "train": {"epochs": epochs, "device": "cpu", "checkpoint": True}}


def child_train(args) -> None:
    """Run one training recipe (JSON in args.child) in this process (or this torchrun rank); print memory."""
    sys.path.insert(0, str(HERE))
    from memory import PeakMemory

    tiny_cnn_registered()
    from transferkit import Experiment

    recipe = json.loads(Path(args.child).read_text())
    with PeakMemory(every=0.2) as peak:
        result = Experiment.from_dict(recipe).run(output_dir=args.output, progress=False)
    variant = next(iter(result.variants.values()))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "peak_tree_pss_mib": peak.peak, "history": variant.history}))


def child_pipeline(args) -> None:
    """Stream `args.pipeline_batches` training batches of the shards in args.child (the streamed pipeline alone: the
    index, the shard readers, the shuffle buffer, decoding and batches; no model) in this fresh process; print memory."""
    sys.path.insert(0, str(HERE))
    from memory import PeakMemory

    shards = Path(args.child)
    with PeakMemory(every=0.2) as peak:
        rate = epoch_rate(stream_loader(shards, str(shards), 0), 1, args.pipeline_batches)
    print(json.dumps({"ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "peak_tree_pss_mib": peak.peak, "images_per_s": rate,
                      "images": args.pipeline_batches * BATCH}))


def pipeline_memory(shards: Path, batches: int) -> dict:
    """child_pipeline on `shards` in a fresh process; its printed figures."""
    env = {**os.environ, "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(shards),
                           "--pipeline-batches", str(batches)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"pipeline memory on {shards} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_child(recipe: dict, work: Path, nproc: int = 1) -> dict:
    """Train `recipe` in a fresh process (under torchrun with `nproc` > 1); its printed figures."""
    path = work / f"{recipe['name']}.json"
    path.write_text(json.dumps(recipe))
    prefix = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc-per-node", str(nproc)]
    env = {**os.environ, "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": str(max(1, 2 // nproc))}
    done = subprocess.run([*prefix, str(Path(__file__).resolve()), "--child", str(path), "--output",
                           str(work / "runs")], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{recipe['name']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def loaders(photos: Path, shards: Path, base: str | None, workers: int, crop: int = CROP, side: int = SIDE) -> dict:
    """The training pipelines over the same images: folder, local shards, and shards over HTTP (with `base`)."""
    import torch

    from transferkit.data.folder import split_folder
    from transferkit.data.images import open_rgb
    from transferkit.data.loading import ImageFileDataset, make_loader
    from transferkit.data.transforms import train_transform
    from transferkit.model.preprocess import Preprocessing
    from transferkit.recipe.spec import DataSpec

    transform = train_transform(Preprocessing(input_size=crop, resize_size=side), DataSpec())
    samples = split_folder(photos).train
    folder = make_loader(ImageFileDataset(samples, transform, open_rgb), BATCH, True, 0, workers, torch.device("cpu"))
    return {"folder": folder, "shards_local": stream_loader(shards, str(shards), workers, crop, side),
            **({"shards_http": stream_loader(shards, base, workers, crop, side)} if base else {})}


def stream_loader(shards: Path, where: str, workers: int, crop: int = CROP, side: int = SIDE):
    """The streamed training pipeline over the training shards of `shards`, read from `where` (a folder or URL)."""
    import torch

    from transferkit.data.shard_index import read_index
    from transferkit.data.stream import ShardStream, StreamLoader, StreamSettings
    from transferkit.data.transforms import train_transform
    from transferkit.model.preprocess import Preprocessing
    from transferkit.recipe.spec import DataSpec

    transform = train_transform(Preprocessing(input_size=crop, resize_size=side), DataSpec())
    index = read_index(str(shards / "index.json"))
    entries = index.splits["train"].shards
    settings = StreamSettings([f"{where}/{e.name}" for e in entries], [e.images for e in entries], index.labels,
                              index.outputs, BATCH, True, 0, 1000, index.splits["train"].images // BATCH,
                              workers=workers)
    return StreamLoader(ShardStream(settings, transform), torch.device("cpu"))


def evict(*roots: Path) -> int:
    """Drop the files under `roots` from the page cache (posix_fadvise DONTNEED), so the next pass reads them from
    the disk, as a data set larger than the memory is read; the number of files."""
    count = 0
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
                count += 1
    return count


def epoch_rate(loader, epoch: int, batches: int | None = None) -> float:
    """Training images per second over one epoch of `loader`, or its first `batches` batches (no model)."""
    loader.sampler.set_epoch(epoch)
    started, images = time.perf_counter(), 0
    for step, batch in enumerate(loader, 1):
        images += batch.labels.shape[0]
        if batches and step >= batches:
            break
    return images / (time.perf_counter() - started)


def throughput(photos: Path, shards: Path, rounds: int, workers: int, batches: int | None = None,
               cold: bool = False) -> dict:
    """images/s of each pipeline per round (interleaved), with the HTTP server in a process of its own; `cold`:
    the images and shards evicted from the page cache before every pass."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(shards)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        pipelines = loaders(photos, shards, f"http://127.0.0.1:{port}", workers)
        rates: dict[str, list[float]] = {name: [] for name in pipelines}
        for round_ in range(rounds):
            for name, loader in pipelines.items():
                if cold:
                    evict(photos, shards)
                rates[name].append(epoch_rate(loader, round_ + 1, batches))
                print(f"  workers {workers} round {round_ + 1}{' cold' if cold else ''}: {name} "
                      f"{rates[name][-1]:.0f} images/s", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return rates


def photo_rates(photos: Path, work: Path, rounds: int, batches: int | None = None) -> dict | None:
    """images/s of the folder and streamed pipelines (0 workers: one core) on the real clothing photos (400 x 534
    JPEGs, about ImageNet's), cropped to 224 px: what one core decodes, for the plan in docs/distributed.md."""
    if not photos.is_dir():
        return None
    shards = make_shards(photos, work / "shards-clothing", "16MB")
    pipelines = loaders(photos, shards, None, 0, crop=224, side=256)
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for round_ in range(rounds):
        for name, loader in pipelines.items():
            rates[name].append(epoch_rate(loader, round_ + 1, batches))
            print(f"  photos round {round_ + 1}: {name} {rates[name][-1]:.0f} images/s", flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/transferkit-bench-shards"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--photos", type=Path, default=HERE.parents[1] / "shared" / "data" / "clothing-small",
                        help="real photos for the 224 px decode rate (skipped when absent)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "memory", "ddp"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader workers of the throughput passes")
    parser.add_argument("--cache", nargs="+", default=["warm", "cold"], choices=["warm", "cold"],
                        help="throughput with the files in the page cache (warm) and evicted before every pass (cold)")
    parser.add_argument("--batches", type=int, default=None,
                        help="time the first N batches of each throughput pass (default: the whole epoch)")
    parser.add_argument("--photo-batches", type=int, default=None, help="the same for the real photos")
    parser.add_argument("--pipeline-batches", type=int, default=None,
                        help="measure memory on N batches of the streamed pipeline alone (no model) instead of a "
                             "whole training epoch")
    parser.add_argument("--ddp-epochs", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (child_pipeline if args.pipeline_batches else child_train)(args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {"load_before": os.getloadavg(), "sizes": args.sizes, "image_side": SIDE, "crop": CROP,
                    "batch": BATCH, "cores": len(os.sched_getaffinity(0))}
    sets = {}
    for n in args.sizes:
        started = time.perf_counter()
        photos = make_images(args.work / f"photos-{n}", n, max(500, n // 20))
        made = time.perf_counter()
        shards = make_shards(photos, args.work / f"shards-{n}")
        sets[n] = (photos, shards)
        index = json.loads((shards / "index.json").read_text())
        report.setdefault("sets", {})[n] = {"train_shards": len(index["splits"]["train"]["shards"]),
                                            "train_bytes": sum(s["bytes"] for s in index["splits"]["train"]["shards"]),
                                            "make_seconds": made - started,
                                            "shard_seconds": time.perf_counter() - made}
        print(f"{n} images: {report['sets'][n]}", flush=True)
    if "throughput" not in args.skip:
        photos, shards = sets[args.sizes[0]]
        for cache in args.cache:
            key = "throughput_images_per_s" + ("_cold" if cache == "cold" else "")
            report[key] = {f"workers_{w}": throughput(photos, shards, args.rounds, w, args.batches, cache == "cold")
                           for w in args.workers}
            save(report, args.json)
        report["throughput_batches"] = args.batches
        save(report, args.json)
        report["photos_224px_images_per_s"] = photo_rates(args.photos, args.work, args.rounds, args.photo_batches)
        report["photo_batches"] = args.photo_batches
        save(report, args.json)
    if "memory" not in args.skip and args.pipeline_batches:
        report["pipeline_memory"] = {}
        for n in args.sizes:
            report["pipeline_memory"][n] = pipeline_memory(sets[n][1], args.pipeline_batches)
            print(f"streamed pipeline memory at {n}: {report['pipeline_memory'][n]}", flush=True)
            save(report, args.json)
    elif "memory" not in args.skip:
        report["memory"] = {}
        for n in args.sizes:
            figures = run_child(stream_recipe(sets[n][1], f"rss-{n}", epochs=1), args.work)
            row = figures["history"][-1]
            report["memory"][n] = {"ru_maxrss_mib": figures["ru_maxrss_mib"],
                                   "peak_tree_pss_mib": figures["peak_tree_pss_mib"],
                                   "train_images_per_s": row["train_images_per_s"]}
            print(f"memory at {n}: {report['memory'][n]}", flush=True)
    if "ddp" not in args.skip:
        photos = make_images(args.work / "photos-2000", 2000, 500)
        shards = make_shards(photos, args.work / "shards-2000", "200kB")
        keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
        epochs = args.ddp_epochs
        runs = {"one_process": run_child(stream_recipe(shards, "ddp-one", epochs), args.work),
                "two_processes": run_child(stream_recipe(shards, "ddp-two", epochs), args.work, nproc=2),
                "one_process_seed_1": run_child(stream_recipe(shards, "ddp-seed1", epochs, seed=1), args.work)}
        report["ddp_epochs"] = epochs
        report["ddp"] = {name: [{k: row[k] for k in keys} for row in figures["history"]]
                         for name, figures in runs.items()}
        print(json.dumps(report["ddp"], indent=1), flush=True)
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    save(report, args.json)


def save(report: dict, path: Path | None) -> None:
    """Write what was measured so far (a run cut short by a timeout keeps its finished sections)."""
    if path:
        path.write_text(json.dumps({**report, "load_now": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
