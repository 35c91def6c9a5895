"""What the recipe does to a dataset's splits after it is read: a validation split carved out of train, a limit."""

from __future__ import annotations

import random

import torch

from transferkit.data.folder import FolderSplits
from transferkit.data.folds import apply_fold
from transferkit.data.shard_index import shard_splits
from transferkit.data.table import table_splits
from transferkit.errors import DataError
from transferkit.registry import DATASETS
from transferkit.tasks import task_class


def carve_validation(splits: FolderSplits, share: float, seed: int) -> FolderSplits:
    """A seeded, stratified validation split: `share` of each class's training images (at least one, and at
    least one left to train on), the rest stays in train. Refused when the data has a validation split."""
    if splits.val:
        raise DataError(f"data.val_split: the data already has a validation split ({len(splits.val)} images); "
                        f"remove data.val_split, or the validation folder")
    stratified = all(isinstance(label, int) for _, label in splits.train)  # classes; label sets and values: not
    by_class: dict[int, list] = {}
    for sample in splits.train:
        by_class.setdefault(sample[1] if stratified else 0, []).append(sample)
    rng = random.Random(seed * 1_000_003 + 7)
    train, val = [], []
    for label in sorted(by_class):
        samples = sorted(by_class[label])
        if len(samples) < 2:
            which = f"class '{splits.classes[label]}'" if stratified else "the training split"
            raise DataError(f"data.val_split: {which} has {len(samples)} training image; "
                            f"a validation split needs at least 2{' per class' if stratified else ''}")
        rng.shuffle(samples)
        n_val = min(len(samples) - 1, max(1, round(len(samples) * share)))
        val.extend(samples[:n_val])
        train.extend(samples[n_val:])
    return FolderSplits(splits.classes, sorted(train), splits.test, sorted(val), splits.root)


def limit_splits(splits: FolderSplits, limit: int, seed: int) -> FolderSplits:
    """At most `limit` images per split, a seeded choice kept in file order."""
    generator = torch.Generator().manual_seed(seed)

    def trim(samples):
        if samples is None or len(samples) <= limit:
            return samples
        keep = sorted(torch.randperm(len(samples), generator=generator)[:limit].tolist())
        return [samples[i] for i in keep]

    return FolderSplits(splits.classes, trim(splits.train), trim(splits.test), trim(splits.val), splits.root)


def recipe_splits(spec) -> FolderSplits:
    """The dataset a recipe names (or its label table), resolved to labelled files: limited to data.limit, val
    carved out if asked, or one fold's part held out as val (data.kfold); or, for data.source webdataset, the
    streamed splits (ShardSplits) its index counts.

    Training and evaluation both call this, so an evaluation reads the very files the run was tested on.
    """
    if spec.data.source == "webdataset":  # streamed: counted through the index, never listed
        return shard_splits(spec.data, task_class(spec.task.name).labels_as)
    if spec.data.labels:
        splits = table_splits(spec.data, task_class(spec.task.name).labels_as, spec.seed)
    else:
        splits = DATASETS.get(spec.data.dataset)(spec.data, spec.seed)
    if spec.data.limit:
        splits = limit_splits(splits, spec.data.limit, spec.seed)
    if spec.data.val_split:
        splits = carve_validation(splits, spec.data.val_split, spec.seed)
    if spec.data.kfold:
        splits = apply_fold(splits, spec.data.kfold, spec.seed, spec.data.labels)
    return splits
