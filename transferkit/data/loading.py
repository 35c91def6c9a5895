"""Datasets of labelled image files and the DataLoaders that batch them as uint8 tensors."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from transferkit.data.images import open_rgb
from transferkit.errors import DataError


class BadImage(NamedTuple):
    """A sample that could not be decoded: its file and the reason."""

    path: str
    message: str


@dataclass
class Batch:
    """uint8 images (N, 3, H, W), their targets (int64 classes (N,), or float32 (N, K)), and the files left out.

    Under device augmentation (transferkit.data.device_bank) images are uncropped canvases, with
    `boxes` (N, 4) float crop boxes and `flips` (N,) bool for the device to apply.
    """

    images: torch.Tensor
    labels: torch.Tensor
    bad: list[BadImage] = field(default_factory=list)
    boxes: torch.Tensor | None = None
    flips: torch.Tensor | None = None
    keys: list[str] | None = None  # streamed samples: each good image's key in its split (feature extraction)

    def pin_memory(self) -> "Batch":
        """A copy in page-locked memory (the DataLoader's pin_memory thread calls this): asynchronous copies."""
        def pin(t):
            return None if t is None else t.pin_memory()
        return Batch(pin(self.images), pin(self.labels), self.bad, pin(self.boxes), pin(self.flips), self.keys)


class ImageFileDataset(Dataset):
    """(path, label) samples decoded to RGB and transformed; each key is (index, augmentation seed)."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Callable, decode: Callable = open_rgb):
        self.samples = samples
        self.transform = transform
        self.decode = decode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, aug_seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        try:
            image = self.decode(path)
        except DataError as exc:
            return BadImage(str(path), str(exc))
        return transformed(self.transform, image, aug_seed), label


def transformed(transform: Callable, image, aug_seed: int | None):
    """`transform(image)`, its randomness drawn from `aug_seed` when given (the caller's RNG stream untouched)."""
    if aug_seed is None:
        return transform(image)
    # Seeding per sample makes augmentation a function of (seed, epoch, index): identical whatever
    # the worker count, and after a resume. The transforms draw from the CPU generator only; saving and
    # restoring its state keeps the caller's stream untouched (torch.random.fork_rng with torch.manual_seed,
    # which also visits every device backend, cost far more a sample: docs/performance.md).
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(aug_seed)
    try:
        return transform(image)
    finally:
        generator.set_state(state)


@dataclass(frozen=True)
class Shard:
    """One process's share of the data among `world` processes (rank 0 of 1: all of it)."""

    rank: int = 0
    world: int = 1

    def take(self, items: list, batch: int | None = None) -> list:
        """Of each run of `batch` items (of all of them when None), every world-th one from `rank` on: the
        images of global step k are the same whatever the process count."""
        if self.world == 1:
            return items
        if batch is None:
            return items[self.rank::self.world]
        return [item for start in range(0, len(items), batch)
                for item in items[start:start + batch][self.rank::self.world]]

    def count(self, total: int, batch: int | None = None) -> int:
        """How many of `total` items `take` gives this process."""
        def share(n: int) -> int:
            return len(range(self.rank, n, self.world))
        if batch is None:
            return share(total)
        return total // batch * share(batch) + share(total % batch)


def kept_samples(size: int, batch: int, world: int = 1) -> int:
    """Samples of an epoch that are trained on: a last global batch too small for every process to get two
    images (batch norm fails on one) is dropped, this epoch only; with one process, a lone last image."""
    last = size % batch
    return size - last if 0 < last < 2 * world else size


class EpochSampler(Sampler):
    """Yields (index, augmentation seed) in an order fixed by (seed, epoch); call set_epoch each epoch.

    With `weights` (one per sample) each epoch draws `size` samples with replacement in proportion to
    them: inverse class frequencies make a balanced sampler. With `batch` (the global training batch) a
    too-small last batch is left out (`kept_samples`), and `shard` takes this process's share of each
    global batch; without it, the shard takes every world-th sample (evaluation: each sample once).
    """

    def __init__(self, size: int, seed: int, shuffle: bool, weights: torch.Tensor | None = None,
                 batch: int | None = None, shard: Shard = Shard()):
        self.size, self.seed, self.shuffle, self.epoch, self.skip = size, seed, shuffle, 0, 0
        self.weights, self.batch, self.shard = weights, batch, shard

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Choose the epoch the next iteration yields, leaving out its first `skip` samples of the global order
        (a resume)."""
        self.epoch, self.skip = epoch, skip

    def _global_count(self) -> int:
        n = self.size - self.skip
        return kept_samples(n, self.batch, self.shard.world) if self.batch else n

    def __len__(self) -> int:
        return self.shard.count(self._global_count(), self.batch)

    def global_order(self) -> list[tuple[int, int]]:
        """The epoch's (index, augmentation seed) pairs for all processes, after `skip`."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        elif self.shuffle:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator)
        return list(zip(order.tolist(), seeds.tolist()))[self.skip:][:self._global_count()]

    def __iter__(self):
        return iter(self.shard.take(self.global_order(), self.batch))


class ReadAhead:
    """A DataLoader without worker processes, with a thread that decodes its images ahead, in the order the
    loader will ask for them (`fill(paths, stop)`: the decoded-image cache's `read_ahead`). JPEG decoding then
    overlaps the training step; cropping, which draws random numbers, stays in the loop, so the batches are
    the same. Everything else (len, sampler, dataset) is the loader's."""

    def __init__(self, loader: DataLoader, fill: Callable):
        self.loader, self.fill = loader, fill

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["loader"], name)

    def __iter__(self):
        samples = self.loader.dataset.samples
        paths = [samples[index][0] for index, _ in self.loader.sampler]  # this epoch's order (after a resume's skip)
        stop = threading.Event()
        thread = threading.Thread(target=self.fill, args=(paths, stop), daemon=True, name="transferkit-read-ahead")
        thread.start()
        try:
            yield from self.loader
        finally:
            stop.set()
            thread.join()


def batch_to_device(batch: Batch, device: torch.device, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's images and labels on `device`, images in the model's memory format."""
    images = batch.images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch.labels.to(device, non_blocking=True)


def target_tensor(targets: list) -> torch.Tensor:
    """Class indices as int64 (N,); label vectors or values as float32 (N, K)."""
    if targets and isinstance(targets[0], int):
        return torch.tensor(targets, dtype=torch.long)
    return torch.tensor(targets, dtype=torch.float32)


def collate(items: list) -> Batch:
    """Stack good samples; keep bad ones aside so the engine can skip or stop with the file named."""
    good = [item for item in items if not isinstance(item, BadImage)]
    bad = [item for item in items if isinstance(item, BadImage)]
    if not good:
        return Batch(torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad)
    labels = target_tensor([label for _, label in good])
    images = torch.stack([image for image, _ in good])
    return Batch(images, labels, bad)


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_num_workers(device: torch.device, processes: int = 1) -> int:
    """Worker processes for decoding: all cores but one on a GPU machine; on CPU one per 4 cores (none on 2);
    of each process's share of the cores when `processes` train on this machine.

    On a CPU the model needs every core, and decoding is cheap next to a training step (with the decoded
    cache, a small share of one), so a worker process there costs memory and core contention for no gain.
    """
    cores = max(1, available_cores() // processes)
    if device.type == "cuda":
        return min(16, max(1, cores - 1))
    return min(4, cores // 4)


def default_eval_batch_size(device: torch.device, batch_size: int, input_size: int = 224) -> int:
    """Batch for evaluation and feature extraction: on CPU max(8, threads) at 224 px, larger in proportion to the
    pixels saved at smaller inputs, at most batch_size. Elsewhere: batch_size.

    Small batches keep a CPU's activations in cache (measured on 2 cores at 224 px: 2.7x the images/s of batch 32
    for EfficientNet-Lite0, 1.3x for ResNet-18); at 32 px the activations of 128 images are those of 2.6 at 224 px,
    and batch 8 ran ResNet-18 at a sixth of batch 128's images/s (docs/performance.md). Eval-mode results do not
    depend on the batch.
    """
    if device.type == "cpu":
        same_pixels = max(1, round((224 / max(1, input_size)) ** 2))
        return min(batch_size, max(8, torch.get_num_threads()) * same_pixels)
    return batch_size


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int,
                device: torch.device, weights: torch.Tensor | None = None, shard: Shard = Shard()) -> DataLoader:
    """A DataLoader over `dataset` with the epoch sampler, persistent workers and pinned memory on CUDA.

    Training (`shuffle`) batches are `batch_size` globally, batch_size / world per process; evaluation
    gives each process every world-th sample, in batches of `batch_size`.
    """
    sampler = EpochSampler(len(dataset), seed, shuffle, weights, batch=batch_size if shuffle else None, shard=shard)
    return DataLoader(
        dataset, batch_size=batch_size // shard.world if shuffle else batch_size, sampler=sampler,
        collate_fn=collate, num_workers=num_workers, persistent_workers=num_workers > 0,
        pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers > 0 else None)
