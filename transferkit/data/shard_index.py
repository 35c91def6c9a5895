"""The shard index (index.json beside the shards `transferkit shard` writes) and the streamed splits a recipe's
data.urls resolve to through it.

The index says, per split, how many images each shard holds and per class, so an epoch has a fixed number of
steps, a loader knows its length, and the task learns what it needs from the training targets (class counts,
label counts, the targets' mean and spread) without reading an image. Nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from transferkit.data.shard_urls import base_name, beside, expand, first_unreachable, read_bytes, reason_of
from transferkit.errors import DataError

INDEX_NAME = "index.json"
FORMAT = "transferkit-shards/1"
SPLITS = ("train", "val", "test")


@dataclass
class ShardEntry:
    """One shard as written: its file name, image count, size in bytes and images per class (or label)."""

    name: str
    images: int
    bytes: int
    per_class: dict[str, int] = field(default_factory=dict)


@dataclass
class SplitIndex:
    """One split's shards, their brace pattern, and what its targets add up to."""

    pattern: str
    shards: list[ShardEntry]
    per_class: dict[str, int] = field(default_factory=dict)  # single_label: images; multi_label: positives
    targets: dict | None = None  # regression: {"mean": [...], "std": [...]} per target column

    @property
    def images(self) -> int:
        """Images in all of the split's shards."""
        return sum(entry.images for entry in self.shards)


@dataclass
class ShardIndex:
    """What index.json holds: the labels' kind (single_label, multi_label, regression), the outputs (classes, labels
    or target names) and each split's shards."""

    labels: str
    outputs: list[str]
    splits: dict[str, SplitIndex]
    source: str = ""  # where the shards were written from (for people; not read back)

    def to_json(self) -> str:
        """The index as stable JSON text (sorted keys: the same input writes the same bytes)."""
        splits = {name: {"pattern": s.pattern, "images": s.images, "per_class": s.per_class,
                         **({"targets": s.targets} if s.targets else {}),
                         "shards": [vars(entry) for entry in s.shards]} for name, s in self.splits.items()}
        return json.dumps({"format": FORMAT, "labels": self.labels, "outputs": self.outputs, "source": self.source,
                           "splits": splits}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> "ShardIndex":
        """Parse index.json text; DataError naming `where` when it is not one."""
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, not {FORMAT}")
            splits = {name: SplitIndex(s["pattern"], [ShardEntry(**entry) for entry in s["shards"]],
                                       s.get("per_class", {}), s.get("targets"))
                      for name, s in raw["splits"].items()}
            return cls(raw["labels"], list(raw["outputs"]), splits, raw.get("source", ""))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{where}: not a shard index ({exc}); write the shards with `transferkit shard`, which "
                            f"puts {INDEX_NAME} beside them") from None


def read_index(url: str, field_name: str = "data.urls.index") -> ShardIndex:
    """The index at `url`; a one-line DataError when it cannot be read (a dead URL at start)."""
    try:
        text = read_bytes(url)
    except Exception as exc:  # refused connections, timeouts and HTTP errors read the same to the user
        reason = reason_of(exc)
        fix = (f"point it at the {INDEX_NAME} `transferkit shard` wrote beside the shards" if reason == "not found"
               or reason.startswith("HTTP 404") else "check the address and that the server is up")
        raise DataError(f"{field_name}: cannot read {url} ({reason}); {fix}") from None
    return ShardIndex.from_json(text, url)


@dataclass
class ShardSplit:
    """One split of streamed data: its shard URLs in order, the images each holds, and its targets' summary."""

    role: str
    urls: list[str]
    counts: list[int]
    per_class: dict[str, int] = field(default_factory=dict)
    targets: dict | None = None

    def __len__(self) -> int:
        return sum(self.counts)


@dataclass
class ShardSplits:
    """The splits of a webdataset source, shaped like FolderSplits where the run reads them (classes, train, test,
    val, len()); their images are streamed, never listed."""

    classes: list[str]
    train: ShardSplit
    test: ShardSplit
    val: ShardSplit | None
    labels: str
    index_url: str
    root: None = None
    skipped: list[str] = field(default_factory=list)
    scan: None = None

    def split(self, role: str) -> ShardSplit | None:
        """The split playing `role` (train, val, test), or None."""
        return getattr(self, role)


def index_url(urls) -> str:
    """data.urls.index, or index.json beside the first training shard."""
    return urls.index or beside(expand(urls.train)[0], INDEX_NAME)


def listed_training_images(urls: dict) -> int:
    """The images in the training shards a raw data.urls mapping lists, counted by the index (no shard is read)."""
    train = urls.get("train") or []
    listed = expand(train)
    index = read_index(urls.get("index") or beside(listed[0], INDEX_NAME)) if listed else None
    if index is None or "train" not in index.splits:
        return 0
    entries = {entry.name: entry.images for entry in index.splits["train"].shards}
    return sum(entries.get(base_name(url), 0) for url in listed)


def shard_splits(data, labels: str) -> ShardSplits:
    """The streamed splits data.urls names, counted through the index; DataError when a URL is not in the index
    or the shards hold another kind of labels than the task reads (`labels`: its labels_as)."""
    where = index_url(data.urls)
    index = read_index(where)
    if index.labels != labels:
        raise DataError(f"task.name: the shards hold {index.labels} labels ({where}); set task: {index.labels}, or "
                        f"write shards for this task (transferkit shard ... --set task=...)")
    splits: dict[str, ShardSplit | None] = {}
    for role in SPLITS:
        written = data.urls.of(role)
        if written is None:
            splits[role] = None
            continue
        if role not in index.splits:
            raise DataError(f"data.urls.{role}: the index {where} has no {role} split (it has "
                            f"{', '.join(index.splits)}); remove data.urls.{role} or write that split")
        entries = {entry.name: entry for entry in index.splits[role].shards}
        urls = expand(written)
        if not urls:
            raise DataError(f"data.urls.{role}: names no shard; give a brace pattern or a list of shard URLs")
        unknown = next((url for url in urls if base_name(url) not in entries), None)
        if unknown is not None:
            names = sorted(entries)
            raise DataError(f"data.urls.{role}: {unknown} is not among the {role} shards of the index {where} "
                            f"({names[0]} ... {names[-1]}); point data.urls.{role} at the shards the index lists")
        chosen = [entries[base_name(url)] for url in urls]
        per_class = index.splits[role].per_class if len(chosen) == len(entries) else _summed(chosen)
        splits[role] = ShardSplit(role, urls, [entry.images for entry in chosen], per_class,
                                  index.splits[role].targets)
    return ShardSplits(index.outputs, splits["train"], splits["test"], splits["val"], index.labels, where)


def _summed(entries: list[ShardEntry]) -> dict[str, int]:
    total: dict[str, int] = {}
    for entry in entries:
        for name, count in entry.per_class.items():
            total[name] = total.get(name, 0) + count
    return total


def check_reachable(splits: ShardSplits) -> None:
    """One-line DataError naming the first shard of any split that cannot be read now (a dead URL at start)."""
    for role in SPLITS:
        split = splits.split(role)
        found = first_unreachable(split.urls) if split else None
        if found:
            url, reason = found
            raise DataError(f"data.urls.{role}: cannot read {url} ({reason}); check the address and that the "
                            f"server is up, or leave the shard out of data.urls.{role}")


def readers_problem(shards: int, processes: int, workers: int) -> str | None:
    """Why `shards` training shards would leave a reader idle over `processes` x `workers` loader workers (each
    rank and worker streams shards of its own; one with none stalls the others), with the fix; None when enough."""
    per_process = max(1, workers)
    readers = processes * per_process
    if shards >= readers:
        return None
    what = f"{processes} process(es) x {per_process} loader worker(s)" if workers else f"{processes} process(es)"
    fixes = [f"write at least {readers} shards (transferkit shard with a smaller --shard-size)"]
    if workers > 1 or (workers and shards >= processes):
        fixes.append(f"set data.num_workers: {max(0, shards // processes)}")
    if processes > 1:
        fixes.append("run fewer processes")
    return (f"{shards} training shard(s) for {what} = {readers} readers: {readers - shards} would get no shard and "
            f"stall the others; {', or '.join(fixes)}")


def training_targets(splits) -> list:
    """The training targets as Task.prepare and the class weights read them: every sample's of a file list, or
    for streamed shards a list with the same counts, label sums, mean and spread, built from the index."""
    if not isinstance(splits, ShardSplits):
        return [target for _, target in splits.train]
    train, outputs = splits.train, splits.classes
    if splits.labels == "single_label":
        return [i for i, name in enumerate(outputs) for _ in range(train.per_class.get(name, 0))]
    if splits.labels == "multi_label":  # (images, labels) 0/1, each label's positives in its first rows
        positives = np.array([train.per_class.get(name, 0) for name in outputs])
        return np.arange(len(train))[:, None] < positives[None, :]
    mean, std = train.targets["mean"], train.targets["std"]  # two values m - s and m + s: mean m, spread s
    return [tuple(m - s for m, s in zip(mean, std)), tuple(m + s for m, s in zip(mean, std))]


def is_shard_folder(path) -> bool:
    """True for a folder holding the index.json `transferkit shard` writes."""
    from pathlib import Path

    return Path(path).is_dir() and (Path(path) / INDEX_NAME).is_file()


def folder_recipe(folder) -> tuple[dict, ShardIndex]:
    """The recipe keys that stream the shards in `folder` (task and data sections), and its index."""
    from pathlib import Path

    folder = Path(folder).expanduser().absolute()
    index = read_index(str(folder / INDEX_NAME), str(folder / INDEX_NAME))
    urls = {role: str(folder / split.pattern) for role, split in index.splits.items()}
    if "train" not in urls or "test" not in urls:
        raise DataError(f"{folder / INDEX_NAME}: shards of a train and a test split are needed (found "
                        f"{', '.join(urls)}); write them with transferkit shard from a folder with train/ and test/")
    return {"task": {"name": index.labels}, "data": {"source": "webdataset", "urls": urls}}, index
