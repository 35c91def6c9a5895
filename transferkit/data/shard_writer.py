"""Write labelled image files as WebDataset tar shards (webdataset's TarWriter), one set per split, and index.json.

Each sample is `<key>.<ext>` (the image file's bytes, untouched), `<key>.json` (its source path and its labels:
class, label set or values) and, for single-label classes, `<key>.cls` (the class index, webdataset's
convention). Keys number the images of a split in shard order. The training split is shuffled with the seed
first (a shard then holds every class, and the loader's shuffle buffer mixes across shards); the evaluation
splits keep file order. A split's images are spread evenly over ceil(bytes / shard size) shards, so shards
differ by at most one image. Fixed order, header times, owners and modes: the same input writes the same bytes.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from transferkit.data.folder import FolderSplits
from transferkit.data.shard_index import INDEX_NAME, ShardEntry, ShardIndex, SplitIndex
from transferkit.data.shard_urls import webdataset_module
from transferkit.errors import DataError
from transferkit.files import atomic_file, atomic_write_text

TAR_OVERHEAD = 3 * 512 + 512  # per sample: three member headers and their padding, about
OWNER = "transferkit"
MTIME = 0  # every member's time: 1970-01-01, so a rerun writes the same bytes


@dataclass(frozen=True)
class ShardSettings:
    """How shards are written: the size each aims at (bytes), the seed of the training split's order, and
    optionally how many shards the training split gets (a multiple of the readers reads each image once an epoch)."""

    shard_size: int = 256 * 1000**2
    seed: int = 0
    train_shards: int | None = None


def parse_size(text: str) -> int:
    """'256MB', '1.5GB', '64M', '100000' -> bytes (decimal units, as disks count); DataError otherwise."""
    units = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
             "kib": 2**10, "mib": 2**20, "gib": 2**30}
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("kmgib")
    unit = cleaned[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        value = 0
    if value < 1:
        raise DataError(f"--shard-size {text}: use a size like 256MB, 1GB or 64MiB")
    return int(value)


def _record(path: Path, target, root: Path | None, outputs: list[str], labels: str) -> dict:
    """The sample's json member: where it came from and its labels as the task reads them."""
    try:
        source = path.relative_to(root).as_posix() if root else path.name
    except ValueError:
        source = path.as_posix()
    if labels == "single_label":
        return {"path": source, "class": outputs[target]}
    if labels == "multi_label":
        return {"path": source, "labels": [name for name, on in zip(outputs, target) if on]}
    return {"path": source, "values": list(target)}


def _counts(targets: list, outputs: list[str], labels: str) -> dict[str, int]:
    """Images per class (single_label) or positives per label (multi_label); {} for values."""
    if labels == "single_label":
        return {name: sum(1 for t in targets if t == i) for i, name in enumerate(outputs)}
    if labels == "multi_label":
        return {name: int(sum(t[i] for t in targets)) for i, name in enumerate(outputs)}
    return {}


def _target_summary(targets: list, labels: str) -> dict | None:
    """Regression: each target column's mean and (population) spread, what the task standardises with."""
    if labels != "regression" or not targets:
        return None
    values = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    return {"mean": values.mean(axis=0).tolist(), "std": values.std(axis=0).tolist()}


def shard_names(split: str, count: int) -> tuple[list[str], str]:
    """The file names of a split's `count` shards and their brace pattern: train-000000.tar ... train-{000000..N}."""
    names = [f"{split}-{i:06d}.tar" for i in range(count)]
    pattern = names[0] if count == 1 else f"{split}-{{000000..{count - 1:06d}}}.tar"
    return names, pattern


def plan_shards(samples: list, shard_size: int, count: int | None = None) -> list[list]:
    """The samples spread evenly (counts differing by at most one) over `count` shards, or ceil(bytes / shard_size)."""
    if count is None:
        total = sum(Path(path).stat().st_size + TAR_OVERHEAD for path, _ in samples)
        count = math.ceil(total / shard_size)
    count = max(1, min(len(samples), count))
    return [samples[len(samples) * i // count: len(samples) * (i + 1) // count] for i in range(count)]


def write_split(split: str, samples: list, out: Path, outputs: list[str], labels: str, root: Path | None,
                settings: ShardSettings, start_key: int = 0, on_shard: Callable[[Path, int], None] = lambda p, n: None
                ) -> SplitIndex:
    """One split's shards in `out` (each written atomically) and its part of the index."""
    wds = webdataset_module()
    if split == "train":
        samples = list(samples)
        random.Random(settings.seed).shuffle(samples)
    groups = plan_shards(samples, settings.shard_size, settings.train_shards if split == "train" else None)
    names, pattern = shard_names(split, len(groups))
    entries, key = [], start_key
    for name, group in zip(names, groups):
        with atomic_file(out / name) as handle:
            writer = wds.TarWriter(handle, encoder=False, user=OWNER, group=OWNER, mode=0o444, mtime=MTIME)
            for path, target in group:
                path = Path(path)
                record = _record(path, target, root, outputs, labels)
                sample = {"__key__": f"{key:08d}", path.suffix.lower().lstrip(".") or "img": path.read_bytes(),
                          "json": json.dumps(record, sort_keys=True).encode()}
                if labels == "single_label":
                    sample["cls"] = str(target).encode()
                writer.write(sample)
                key += 1
            writer.close()
        size = (out / name).stat().st_size
        entries.append(ShardEntry(name, len(group), size, _counts([t for _, t in group], outputs, labels)))
        on_shard(out / name, len(group))
    targets = [target for _, target in samples]
    return SplitIndex(pattern, entries, _counts(targets, outputs, labels), _target_summary(targets, labels))


def write_shards(splits: FolderSplits, labels: str, out: str | Path, settings: ShardSettings = ShardSettings(),
                 source: str = "", on_shard: Callable[[Path, int], None] = lambda p, n: None) -> ShardIndex:
    """Every split of `splits` as shards in `out` (a new or empty folder), then index.json (written last: its
    presence marks a complete set). `labels`: how the targets read (single_label, multi_label, regression)."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: {'not a folder' if not out.is_dir() else 'not empty'}; write the shards into a new "
                        f"or empty folder (nothing there is overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for role in ("train", "val", "test"):
        samples = getattr(splits, role)
        if samples:
            written[role] = write_split(role, samples, out, list(splits.classes), labels, splits.root, settings,
                                        on_shard=on_shard)
    index = ShardIndex(labels, list(splits.classes), written, source)
    atomic_write_text(out / INDEX_NAME, index.to_json())
    return index
