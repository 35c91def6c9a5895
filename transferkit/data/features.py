"""Feature cache for a frozen backbone: compute its features once, then train only the head on them.

Under `frozen_backbone` the backbone is a fixed function (weights and batch-norm statistics frozen),
so each image's features can be computed once instead of every epoch. View 0 of a training image
uses the eval transform; with `lr_policy.cache_views: K` the training set instead gets K augmented
views (the train transform, seeded per view and image), and each epoch picks one per image from the
sample's augmentation seed. The head then trains on batches of features in the same order, with the
same optimizer, scheduler, metrics and checkpoints as the uncached path (a Trainer whose `forward` is the head).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import DataLoader, Dataset

from transferkit.data.loading import (BadImage, EpochSampler, ImageFileDataset, Shard, batch_to_device, collate,
                                      make_loader)
from transferkit.device import autocast
from transferkit.model.transfer import TransferModel
from transferkit.recipe.spec import ExperimentSpec


class _Indexed(Dataset):
    """Wraps an image dataset so a batch's labels are the samples' indices (bad files stay BadImage)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        item = self.dataset[key]
        index = key[0] if isinstance(key, tuple) else key
        return item if isinstance(item, BadImage) else (item[0], index)


class FeatureSet(Dataset):
    """Cached features of one split, (views, N, D), keyed like ImageFileDataset by (index, augmentation seed)."""

    def __init__(self, views: torch.Tensor, labels: list[int], bad: dict[int, BadImage], seconds: float = 0.0):
        self.views, self.labels, self.bad = views, labels, bad
        self.seconds = seconds  # how long extracting these features took
        self.reused = 0  # rows an earlier run of this process had computed (FeatureMemo)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        index, aug_seed = key if isinstance(key, tuple) else (key, None)
        if index in self.bad:
            return self.bad[index]
        view = 0 if aug_seed is None else aug_seed % self.views.shape[0]
        return self.views[view, index], self.labels[index]


@dataclass
class Extractor:
    """What feature extraction runs on: the model (its `features`), device, precision and memory format.

    `placement` (an engine Placement: `shard`, `sum_tensor`, `gather`) splits the extraction over processes.
    """

    model: TransferModel
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    placement: Any = None


@torch.no_grad()
def extract_features(extractor: Extractor, dataset: Dataset, batch_size: int, seed: int, num_workers: int,
                     view: int = 0) -> tuple[torch.Tensor, dict[int, BadImage]]:
    """Backbone features (N, D) of every sample in order, on the CPU in fp32, and the unreadable samples.

    Each sample gets the augmentation seed of `view`, so an augmented view is a fixed, reproducible draw.
    Under several processes each extracts every world-th sample, and the rows are summed into all of them.
    """
    model = extractor.model
    was_training = model.training
    model.eval()
    place = extractor.placement
    shard = place.shard if place is not None else Shard()
    loader = make_loader(_Indexed(dataset), batch_size, False, seed * 7919 + view, num_workers, extractor.device,
                         shard=shard)
    features: torch.Tensor | None = None
    bad: dict[int, BadImage] = {}
    for batch in loader:
        for item in batch.bad:
            bad[_index_of(dataset, item.path)] = item
        if batch.labels.numel() == 0:
            continue
        images, indices = batch_to_device(batch, extractor.device, extractor.channels_last)
        with autocast(extractor.device, extractor.precision):
            out = model.features(images).float().cpu()
        if features is None:
            features = torch.zeros(len(dataset), out.shape[1])
        features[indices.cpu()] = out
    model.train(was_training)
    if shard.world > 1:  # the other processes' rows are zeros here: the sum fills them
        width = max(place.gather(features.shape[1] if features is not None else 0))
        features = place.sum_tensor(features if features is not None else torch.zeros(len(dataset), width))
        bad = {index: item for part in place.gather(bad) for index, item in part.items()}
    return (features if features is not None else torch.zeros(len(dataset), 0)), bad


def _index_of(dataset: Dataset, path: str) -> int:
    return next(i for i, (p, _) in enumerate(dataset.samples) if str(p) == path)


def fingerprint(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer: two modules with the same fingerprint compute the same features."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def decoder_key(decode) -> str:
    """What tells two decode functions apart: a decoded-image cache's size and resampling, else the function."""
    owner = getattr(decode, "__self__", decode)  # a cache's bound method, or the (callable) cache itself
    return getattr(owner, "key", None) or f"{getattr(decode, '__module__', '')}.{getattr(decode, '__qualname__', decode)}"


class FeatureMemo:
    """Eval-view backbone features kept across the runs of one process (the folds of `transferkit cv`): an image
    seen through the same frozen backbone, transform, decoder and precision is passed through it once."""

    def __init__(self):
        self._rows: dict[tuple, dict[str, torch.Tensor | BadImage]] = {}

    def rows(self, extractor: Extractor, dataset: ImageFileDataset) -> dict[str, torch.Tensor | BadImage]:
        """The remembered features (or BadImage) by path, for what `extractor` makes of `dataset`'s images."""
        key = (fingerprint(extractor.model.backbone), repr(dataset.transform), decoder_key(dataset.decode),
               extractor.precision, extractor.channels_last, extractor.device.type)
        return self._rows.setdefault(key, {})


def _memo_split(extractor: Extractor, dataset: ImageFileDataset, memo: FeatureMemo, batch_size: int, seed: int,
                num_workers: int) -> FeatureSet:
    """cached_split's eval view through `memo`: only the images it has not seen go through the backbone."""
    started = time.perf_counter()
    rows = memo.rows(extractor, dataset)
    missing = [sample for sample in dataset.samples if str(sample[0]) not in rows]
    if missing:
        fresh = ImageFileDataset(missing, dataset.transform, dataset.decode)
        features, bad = extract_features(extractor, fresh, batch_size, seed, num_workers)
        for index, (path, _) in enumerate(missing):
            rows[str(path)] = bad[index] if index in bad else features[index]
    found = [rows[str(path)] for path, _ in dataset.samples]
    bad = {index: row for index, row in enumerate(found) if isinstance(row, BadImage)}
    good = [row for row in found if not isinstance(row, BadImage)]
    width = good[0].shape[0] if good else 0
    views = torch.stack([row if not isinstance(row, BadImage) else torch.zeros(width) for row in found]) \
        if found else torch.zeros(0, 0)
    labels = [label for _, label in dataset.samples]
    result = FeatureSet(views.unsqueeze(0), labels, bad, time.perf_counter() - started)
    result.reused = len(dataset) - len(missing)
    return result


def cached_split(extractor: Extractor, dataset: Dataset, views: int, batch_size: int, seed: int,
                 num_workers: int, memo: FeatureMemo | None = None) -> FeatureSet:
    """A FeatureSet of one split with `views` seeded views of the dataset's transform (1 for the eval transform).

    `memo` (for the eval transform's single view only: an augmented view depends on the image's place in its
    split) reuses features an earlier run of this process computed.
    """
    if memo is not None and views == 1:
        return _memo_split(extractor, dataset, memo, batch_size, seed, num_workers)
    started = time.perf_counter()
    extracted = [extract_features(extractor, dataset, batch_size, seed, num_workers, view) for view in range(views)]
    seconds = time.perf_counter() - started
    bad = {index: item for _, view_bad in extracted for index, item in view_bad.items()}
    labels = [label for _, label in dataset.samples]
    return FeatureSet(torch.stack([features for features, _ in extracted]), labels, bad, seconds)


def extraction_rate(loaders: list[DataLoader]) -> tuple[int, float]:
    """(images passed through the backbone, seconds it took) over the feature caches behind `loaders`."""
    sets = [loader.dataset for loader in loaders if isinstance(loader.dataset, FeatureSet)]
    return sum(s.views.shape[0] * len(s) for s in sets), sum(s.seconds for s in sets)


def feature_loader(features: FeatureSet, batch_size: int, shuffle: bool, seed: int,
                   weights: torch.Tensor | None = None, shard: Shard = Shard()) -> DataLoader:
    """Batches of cached features in the same (seed, epoch) order, sharding and last-batch rule as the image
    loader's (`make_loader`)."""
    sampler = EpochSampler(len(features), seed, shuffle, weights, batch=batch_size if shuffle else None, shard=shard)
    return DataLoader(features, batch_size=batch_size // shard.world if shuffle else batch_size, sampler=sampler,
                      collate_fn=collate, num_workers=0)


def cache_features(extractor: Extractor, spec: ExperimentSpec, train_ds: ImageFileDataset, eval_sets: dict,
                   eval_batch: int, num_workers: int, console: Console,
                   weights: torch.Tensor | None = None, shard: Shard = Shard(),
                   memo: FeatureMemo | None = None) -> tuple[DataLoader, dict[str, DataLoader]]:
    """Extract the frozen backbone's features once: a training loader and one loader per evaluation split
    (eval views through `memo` when given: features an earlier run of this process computed are reused)."""
    started = time.perf_counter()
    views = spec.lr_policy.cache_views
    source = train_ds if views else ImageFileDataset(train_ds.samples, next(iter(eval_sets.values())).transform,
                                                     train_ds.decode)
    train = cached_split(extractor, source, max(1, views), eval_batch, spec.seed, num_workers,
                         memo if not views else None)
    eval_features = {split: cached_split(extractor, ds, 1, eval_batch, spec.seed, num_workers, memo)
                     for split, ds in eval_sets.items()}
    evals = {split: feature_loader(features, eval_batch, False, spec.seed, shard=shard)
             for split, features in eval_features.items()}
    reused = train.reused + sum(f.reused for f in eval_features.values())
    total = len(train) * max(1, views) + sum(len(f) for f in eval_features.values())
    note = f" ({reused} of {total} reused from an earlier run)" if memo is not None else ""
    console.print(f"  feature cache: {len(train)} train images x {max(1, views)} "
                  f"{'augmented view(s)' if views else 'eval view'}, {train.views.shape[-1]} features, "
                  f"computed in {time.perf_counter() - started:.1f}s{note}")
    return feature_loader(train, spec.data.batch_size, True, spec.seed, weights, shard), evals
