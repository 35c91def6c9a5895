"""Streamed shards as training and evaluation batches: webdataset reads the tars, each reader its own shards.

A reader is one loader worker of one process (the process itself without workers). Training: every epoch
the shard list is shuffled with (seed, epoch), the same on every process, and reader g of R x W takes
shards g, g + RW, ...; it streams them (again, reshuffled, if it runs out) through webdataset's shuffle
buffer and cuts exactly its share of the epoch's fixed number of steps. So every process takes the same
number of steps of batch_size / R images, whatever the shards hold. Evaluation: process r reads shards r,
r + R, ... (worker w every W-th of those) in order, once: each image is counted exactly once.

Resume is exact: the stream of a reader is a function of (seed, epoch, reader), so a resume at step S
regenerates it and passes over the samples of the first S steps without decoding them (the shard
position and the shuffle buffer end up as they were; the skipped samples are read again, not decoded).
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from transferkit.data.folder import IMAGE_EXTENSIONS
from transferkit.data.images import FIXES, EncodedImage, ImageReadError
from transferkit.data.loading import BadImage, Batch, collate, transformed
from transferkit.data.shard_urls import open_url, reason_of, webdataset_module

IMAGE_SUFFIXES = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
SHARD_FIX = "write the shards again from a good copy (transferkit shard), or set data.on_bad_image: skip"


def image_member(sample: dict) -> tuple[str, bytes] | None:
    """(extension, bytes) of the sample's image member, or None when it has none."""
    return next(((ext, sample[ext]) for ext in IMAGE_SUFFIXES if ext in sample), None)


def sample_name(sample: dict) -> str:
    """'<shard URL> sample <key> (<source path>)': how a log names one streamed image."""
    try:
        source = json.loads(sample["json"]).get("path") if "json" in sample else None
    except (ValueError, AttributeError):
        source = None
    return f"{sample.get('__url__', '?')} sample {sample.get('__key__', '?')}" + (f" ({source})" if source else "")


def sample_target(sample: dict, labels: str, outputs: list[str]):
    """The sample's target as the task trains on it: a class index, a 0/1 tuple per label, or the values."""
    if labels == "single_label":
        return int(sample["cls"])
    record = json.loads(sample["json"])
    if labels == "multi_label":
        present = set(record["labels"])
        return tuple(1.0 if name in present else 0.0 for name in outputs)
    return tuple(float(v) for v in record["values"])


def decode_sample(sample: dict, transform: Callable, labels: str, outputs: list[str], aug_seed: int | None = None):
    """(image tensor, target) of one streamed sample, or BadImage naming its shard, key and source file."""
    name = sample_name(sample)
    member = image_member(sample)
    if member is None:
        return BadImage(name, f"{name}: no image in the sample; {SHARD_FIX}")
    ext, data = member
    try:
        image = EncodedImage(name, data, f".{ext}").decode()
        target = sample_target(sample, labels, outputs)
    except ImageReadError as exc:
        return BadImage(name, f"{name}: {exc.reason}; {SHARD_FIX}" if exc.kind != "too-large"
                        else f"{name}: {exc.reason}; {FIXES['too-large']}")
    except (KeyError, ValueError, TypeError) as exc:
        return BadImage(name, f"{name}: its labels cannot be read ({type(exc).__name__}: {exc}); {SHARD_FIX}")
    return transformed(transform, image, aug_seed), target


def shard_samples(url: str, problems: list[BadImage]) -> Iterator[dict]:
    """The samples of one shard, grouped by key (webdataset's tar iterator); an unreachable or broken shard adds
    a BadImage to `problems` and ends early."""
    tariterators = webdataset_module().tariterators

    def stop(exc: Exception) -> bool:
        reason = reason_of(exc)
        problems.append(BadImage(url, f"{url}: shard cannot be read to its end ({reason}); {SHARD_FIX}"))
        return False

    try:
        stream = open_url(url)
    except Exception as exc:  # a missing file, a refused connection, an HTTP error: the shard is unreachable
        stop(exc)
        return
    with stream:
        files = tariterators.tar_file_expander([{"url": url, "stream": stream}], handler=stop)
        yield from tariterators.group_by_keys(files, handler=stop)


@dataclass
class StreamSettings:
    """What a streamed loader reads and how: one split's shards with their image counts, the labels, the batch
    (per process), and this process's place among `world` (with `workers` loader workers each)."""

    urls: list[str]
    counts: list[int]
    labels: str
    outputs: list[str]
    batch: int
    train: bool
    seed: int = 0
    buffer: int = 1000
    steps: int = 0  # training: steps per epoch, the same on every process
    rank: int = 0
    world: int = 1
    workers: int = 0

    @property
    def readers_per_process(self) -> int:
        """Loader workers, or 1 when the process reads itself."""
        return max(1, self.workers)


def shard_order(seed: int, epoch: int, count: int) -> list[int]:
    """The epoch's order of the training shards: seeded by (seed, epoch), the same on every process."""
    order = list(range(count))
    random.Random(f"shards/{seed}/{epoch}").shuffle(order)
    return order


def eval_shards(count: int, rank: int, world: int, worker: int, workers: int) -> list[int]:
    """The shards one evaluation reader reads: process `rank`'s share (every world-th), then its worker's."""
    return list(range(count))[rank::world][worker::max(1, workers)]


def eval_batches(settings: StreamSettings) -> int:
    """Batches this process yields over an evaluation split."""
    W = settings.readers_per_process
    images = [sum(settings.counts[i] for i in eval_shards(len(settings.counts), settings.rank, settings.world, w, W))
              for w in range(W)]
    return sum(-(-n // settings.batch) for n in images)


def _shared_int(index: int, doc: str, none: int | None = None) -> property:
    """A ShardStream attribute kept in its shared-memory `_pass` tensor at `index` (`none` stands for None)."""

    def read(self):
        value = int(self._pass[index])
        return None if none is not None and value == none else value

    def write(self, value) -> None:
        self._pass[index] = none if value is None else value

    return property(read, write, doc=doc)


class ShardStream(IterableDataset):
    """One split's shards as batches (collated: the DataLoader adds none); see the module doc for who reads what."""

    def __init__(self, settings: StreamSettings, transform: Callable, keys: bool = False):
        self.settings, self.transform, self.keys = settings, transform, keys
        # epoch, steps already taken (a resume), augmented view (-1: none), in shared memory: persistent loader
        # workers read the pass the main process set when it starts
        self._pass = torch.tensor([0, 0, -1], dtype=torch.int64).share_memory_()

    epoch = _shared_int(0, "The epoch being streamed (training: seeds the shard order, buffer and augmentation).")
    done = _shared_int(1, "Training steps of this epoch already taken (a resume passes over them).")
    aug_view = _shared_int(2, "Evaluation: draw the train transform's randomness for this view (None: the eval "
                              "transform draws none).", none=-1)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        return self._training(worker) if self.settings.train else self._evaluation(worker)

    def _batch(self, samples: list[dict], seeds: list, problems: list[BadImage]) -> Batch:
        s = self.settings
        items = [decode_sample(sample, self.transform, s.labels, s.outputs, seed)
                 for sample, seed in zip(samples, seeds)]
        batch = collate(items + problems)
        if self.keys:
            batch.keys = [sample["__key__"] for sample, item in zip(samples, items) if not isinstance(item, BadImage)]
        problems.clear()
        return batch

    def _training(self, worker: int) -> Iterator[Batch]:
        s = self.settings
        W = s.readers_per_process
        role = (self.done + worker) % W  # the DataLoader serves worker 0 first: after a resume at step S, S % W
        reader = s.rank * W + role
        mine = shard_order(s.seed, self.epoch, len(s.urls))[reader::s.world * W]
        my_steps = len(range(role, s.steps, W))
        skip = len(range(role, self.done, W))
        problems: list[BadImage] = []
        # exactly this reader's share of the epoch enters the buffer: it never reads ahead into a next pass
        samples = itertools.islice(self._cycled([s.urls[i] for i in mine], reader, problems), my_steps * s.batch)
        shuffled = webdataset_module().shuffle(s.buffer, initial=s.buffer,
                                               rng=random.Random(f"buffer/{s.seed}/{self.epoch}/{reader}"))(samples)
        seeds = random.Random(f"augment/{s.seed}/{self.epoch}/{reader}")
        for step in range(my_steps):
            chunk = [sample for _, sample in zip(range(s.batch), shuffled)]
            chunk_seeds = [seeds.getrandbits(62) for _ in chunk]
            if step < skip:  # taken before the interruption: passed over, not decoded
                problems.clear()
                continue
            yield self._batch(chunk, chunk_seeds, problems)

    def _cycled(self, urls: list[str], reader: int, problems: list[BadImage]) -> Iterator[dict]:
        """A reader's shards, then again in a new seeded order, for as long as the epoch asks; ends when a whole
        pass yields nothing (every shard unreachable)."""
        order, passes = list(urls), 0
        while True:
            found = 0
            for url in order:
                for sample in shard_samples(url, problems):
                    found += 1
                    yield sample
            if not found:
                return
            passes += 1
            random.Random(f"pass/{self.settings.seed}/{self.epoch}/{reader}/{passes}").shuffle(order)

    def _evaluation(self, worker: int) -> Iterator[Batch]:
        s = self.settings
        problems: list[BadImage] = []
        chunk: list[dict] = []
        for index in eval_shards(len(s.urls), s.rank, s.world, worker, s.workers):
            for sample in shard_samples(s.urls[index], problems):
                chunk.append(sample)
                if len(chunk) == s.batch:
                    yield self._batch(chunk, self._view_seeds(chunk), problems)
                    chunk = []
        if chunk or problems:
            yield self._batch(chunk, self._view_seeds(chunk), problems)

    def _view_seeds(self, chunk: list[dict]) -> list:
        """None each (the eval transform draws nothing); for an augmented view, a seed from (seed, view, key), so a
        sample's view is the same whoever reads it."""
        if self.aug_view is None:
            return [None] * len(chunk)
        s = self.settings
        return [random.Random(f"view/{s.seed}/{self.aug_view}/{sample['__key__']}").getrandbits(62)
                for sample in chunk]


@dataclass
class StreamLoader:
    """A DataLoader over a ShardStream with the interface the Trainer uses: len(), iter(), batch_size (per process)
    and sampler.set_epoch(epoch, skip). Its workers persist across passes, as the folder pipeline's do; each pass
    they read the epoch from the stream's shared state."""

    dataset: ShardStream
    device: torch.device
    pin: bool = field(init=False)
    _loader: DataLoader | None = field(init=False, default=None, repr=False)

    def __post_init__(self):
        self.pin = self.device.type == "cuda"

    @property
    def sampler(self) -> "StreamLoader":
        """What the Trainer tells the epoch to (set_epoch)."""
        return self

    @property
    def batch_size(self) -> int:
        """Images per batch of this process."""
        return self.dataset.settings.batch

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Stream epoch `epoch`, leaving out its first `skip` samples of the global order (whole steps: a resume)."""
        s = self.dataset.settings
        self.dataset.epoch, self.dataset.done = epoch, skip // (s.batch * s.world) if s.train else 0

    def __len__(self) -> int:
        s = self.dataset.settings
        return s.steps - self.dataset.done if s.train else eval_batches(s)

    def __iter__(self) -> Iterator[Batch]:
        if self._loader is None:
            workers = self.dataset.settings.workers
            self._loader = DataLoader(self.dataset, batch_size=None, num_workers=workers, pin_memory=self.pin,
                                      persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
                                      generator=torch.Generator().manual_seed(0))
        return iter(self._loader)

    def describe_resume(self, step: int) -> str:
        """What a resume at `step` of an epoch does with the stream (printed with `--resume`)."""
        return (f"exact: each reader streams its shards again from the epoch's start and passes over the samples of "
                f"the first {step} step(s) without decoding them, so the shard position and shuffle buffer are as "
                f"they were")


class StreamedSamples:
    """(EncodedImage, target) of every sample of some shards, read in order one shard at a time, for a single
    process (evaluate, preview, check-data); len() from the index. Unreachable shards and samples without an
    image or labels are left out and listed in `problems`."""

    def __init__(self, urls: list[str], counts: list[int], labels: str, outputs: list[str],
                 per_class: dict[str, int] | None = None):
        self.urls, self.counts, self.labels, self.outputs = urls, counts, labels, outputs
        self.per_class = per_class or {}
        self.problems: list[BadImage] = []

    def __len__(self) -> int:
        return sum(self.counts)

    def absent_classes(self, classes: list[str]) -> list[str]:
        """The classes no sample is labelled with, from the index (single-label shards; [] otherwise)."""
        if self.labels != "single_label":
            return []
        return [name for name in classes if not self.per_class.get(name)]

    def samples_of(self, url: str) -> Iterator[tuple[EncodedImage, object]]:
        """One shard's samples."""
        for sample in shard_samples(url, self.problems):
            name, member = sample_name(sample), image_member(sample)
            if member is None:
                self.problems.append(BadImage(name, f"{name}: no image in the sample; {SHARD_FIX}"))
                continue
            try:
                target = sample_target(sample, self.labels, self.outputs)
            except (KeyError, ValueError, TypeError) as exc:
                self.problems.append(BadImage(name, f"{name}: its labels cannot be read ({exc}); {SHARD_FIX}"))
                continue
            yield EncodedImage(name, member[1], "." + member[0]), target

    def __iter__(self) -> Iterator[tuple[EncodedImage, object]]:
        self.problems = []
        for url in self.urls:
            yield from self.samples_of(url)
