"""The frozen backbone's feature cache over streamed shards: each split streamed once per view, its features kept.

The features (D floats per image and view) are held in memory and sorted by sample key, so the cached set is
the same whatever the process and worker count; the head then trains on them in random order like the feature
cache of image files (data/features.py). The images themselves are streamed, never held.
"""

from __future__ import annotations

import time

import torch

from transferkit.data.features import Extractor, FeatureSet
from transferkit.data.loading import BadImage, batch_to_device
from transferkit.data.stream import StreamLoader
from transferkit.device import autocast
from transferkit.errors import DataError


@torch.no_grad()
def extract_stream(extractor: Extractor, loader: StreamLoader) -> tuple[torch.Tensor, list[str], list, list[BadImage]]:
    """(features (N, D) in fp32 on the CPU, keys, targets, unreadable samples) of this process's share of a split."""
    model = extractor.model
    was_training = model.training
    model.eval()
    parts, keys, targets, bad = [], [], [], []
    for batch in loader:
        bad += batch.bad
        if batch.labels.numel() == 0:
            continue
        images, _ = batch_to_device(batch, extractor.device, extractor.channels_last)
        with autocast(extractor.device, extractor.precision):
            parts.append(model.features(images).float().cpu())
        keys += batch.keys
        targets += batch.labels.tolist() if batch.labels.dim() == 1 else [tuple(row) for row in batch.labels.tolist()]
    model.train(was_training)
    features = torch.cat(parts) if parts else torch.zeros(0, 0)
    return features, keys, targets, bad


def stream_feature_set(extractor: Extractor, loaders: list[StreamLoader], on_bad_image: str) -> FeatureSet:
    """A FeatureSet of one split, one view per loader (the eval view, or seeded augmented views), every process's
    share gathered and sorted by key; unreadable samples stop it under on_bad_image 'fail', else stay listed (the
    epochs report them) at the end with zero features."""
    started = time.perf_counter()
    place = extractor.placement
    views, keys, targets, bad = [], [], [], []
    for loader in loaders:
        share = extract_stream(extractor, loader)
        parts = place.gather(share) if place is not None and place.distributed else [share]
        features = torch.cat([p[0] for p in parts if len(p[1])]) if any(len(p[1]) for p in parts) else torch.zeros(0, 0)
        keys, targets = [k for p in parts for k in p[1]], [t for p in parts for t in p[2]]
        bad = [b for p in parts for b in p[3]]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        views.append(features[order] if len(order) else features)
        keys, targets = [keys[i] for i in order], [targets[i] for i in order]
    if bad and on_bad_image == "fail":
        raise DataError(bad[0].message)
    if not keys:
        raise DataError("no readable images in the shards; run `transferkit check-data` on the recipe")
    width = views[0].shape[1]
    stacked = torch.stack([torch.cat([v, torch.zeros(len(bad), width)]) for v in views])
    placeholder = targets[0]
    labels = targets + [placeholder] * len(bad)
    return FeatureSet(stacked, labels, {len(targets) + i: item for i, item in enumerate(bad)},
                      time.perf_counter() - started)
