"""A webdataset source's data plan and loaders: the streamed counterpart of DataPlan.resolve and the image loaders.

Nothing is decoded ahead or cached: each reader holds its shuffle buffer of still-encoded samples and the
batches in flight, so memory does not grow with the number of images. A frozen backbone's feature cache keeps
D floats per training image (data/stream_features.py), and says so.
"""

from __future__ import annotations

import torch

from transferkit.data.cache import MEMORY_SHARE, physical_memory
from transferkit.data.features import Extractor, FeatureSet, feature_loader
from transferkit.data.loading import Shard, default_eval_batch_size, default_num_workers
from transferkit.data.plan import DataPlan
from transferkit.data.shard_index import ShardSplit, ShardSplits
from transferkit.data.stream import ShardStream, StreamLoader, StreamSettings
from transferkit.data.stream_features import stream_feature_set
from transferkit.data.transforms import eval_transform, train_transform
from transferkit.errors import DataError
from transferkit.model.preprocess import Preprocessing
from transferkit.recipe.check import uses_feature_cache
from transferkit.recipe.spec import ExperimentSpec


def steps_per_epoch(images: int, batch: int) -> int:
    """Training steps of a streamed epoch: the images over the global batch, rounded down (every step full)."""
    return images // batch


def stream_plan(spec: ExperimentSpec, device: torch.device, splits: ShardSplits, local_processes: int = 1,
                world: int = 1) -> DataPlan:
    """The data plan of a webdataset source on `device`, for one of `world` processes (`local_processes` of them on
    this machine share its cores for loader workers)."""
    d = spec.data
    if len(splits.train) < d.batch_size:
        raise DataError(f"data.batch_size: {d.batch_size} is more than the {len(splits.train)} training images in "
                        f"the shards; use at most {len(splits.train)}")
    workers = d.num_workers if d.num_workers is not None else default_num_workers(device, local_processes)
    readers = world * max(1, workers)
    steps = steps_per_epoch(len(splits.train), d.batch_size)
    features = uses_feature_cache(spec)
    stream = {"index": splits.index_url, "shards": {role: len(split.urls) for role in ("train", "val", "test")
                                                    if (split := splits.split(role))},
              "images": {role: len(split) for role in ("train", "val", "test") if (split := splits.split(role))},
              "readers": readers, "steps_per_epoch": steps, "shuffle_buffer": d.shuffle_buffer,
              "resume": "exact: a reader replays its stream, passing over the samples already trained on "
                        "without decoding them"}
    reasons = [f"{len(splits.train.urls)} training shards over {readers} reader(s), {steps} steps of "
               f"{d.batch_size} images per epoch, shuffle buffer {d.shuffle_buffer} samples per reader; streamed "
               f"images are decoded as they are read, no decoded-image cache"]
    if features:
        views = max(1, spec.lr_policy.cache_views)
        stream["feature_cache"] = f"{len(splits.train) * views} training feature vectors held in memory"
        reasons = [f"feature cache: {views} view(s) of the {len(splits.train)} training images streamed once from "
                   f"{len(splits.train.urls)} shards, their features held in memory (the images are not)"]
    eval_batch = d.eval_batch_size or default_eval_batch_size(device, d.batch_size)
    return DataPlan("feature_cache" if features else "stream", "none", "none", 0, 0, d.batch_size, eval_batch, workers,
                    f"shuffle buffer {d.shuffle_buffer}", reasons, stream=stream)


def _settings(split: ShardSplit, splits: ShardSplits, batch: int, train: bool, spec: ExperimentSpec, plan: DataPlan,
              shard: Shard) -> StreamSettings:
    return StreamSettings(split.urls, split.counts, splits.labels, splits.classes, batch, train, spec.seed,
                          spec.data.shuffle_buffer, plan.stream["steps_per_epoch"], shard.rank, shard.world,
                          plan.workers)


def eval_stream(split: ShardSplit, splits: ShardSplits, transform, spec: ExperimentSpec, plan: DataPlan,
                device: torch.device, shard: Shard = Shard(), keys: bool = False) -> StreamLoader:
    """A loader over one split in order, this process's shards once each (evaluation, feature extraction)."""
    settings = _settings(split, splits, plan.eval_batch_size, False, spec, plan, shard)
    return StreamLoader(ShardStream(settings, transform, keys=keys), device)


def stream_loaders(spec: ExperimentSpec, plan: DataPlan, splits: ShardSplits, prep: Preprocessing,
                   device: torch.device, extractor: Extractor | None = None, shard: Shard = Shard()
                   ) -> tuple[object, dict]:
    """The training loader (streamed batches, or batches of cached features with an `extractor`) and one loader per
    evaluation split, each holding this process's share."""
    evals = {role: split for role in ("test", "val") if (split := splits.split(role))}
    if plan.train_source == "feature_cache":
        train = train_feature_set(extractor, spec, plan, splits, prep, device, shard)
        sets = {role: stream_feature_set(extractor, [eval_stream(split, splits, eval_transform(prep), spec, plan,
                                                                  device, shard, keys=True)], spec.data.on_bad_image)
                for role, split in evals.items()}
        loaders = {role: feature_loader(features, plan.eval_batch_size, False, spec.seed, shard=shard)
                   for role, features in sets.items()}
        return feature_loader(train, spec.data.batch_size, True, spec.seed, shard=shard), loaders
    settings = _settings(splits.train, splits, spec.data.batch_size // shard.world, True, spec, plan, shard)
    train = StreamLoader(ShardStream(settings, train_transform(prep, spec.data)), device)
    return train, {role: eval_stream(split, splits, eval_transform(prep), spec, plan, device, shard)
                   for role, split in evals.items()}


def train_feature_set(extractor: Extractor, spec: ExperimentSpec, plan: DataPlan, splits: ShardSplits,
                      prep: Preprocessing, device: torch.device, shard: Shard = Shard(), views: int | None = None
                      ) -> FeatureSet:
    """The training split's features: the eval view, or lr_policy.cache_views seeded augmented views (`views`
    overrides: 0 for the eval view alone, as the probe wants)."""
    views = spec.lr_policy.cache_views if views is None else views
    loaders = [eval_stream(splits.train, splits, eval_transform(prep), spec, plan, device, shard, keys=True)]
    if views:
        loaders = []
        for view in range(views):
            loader = eval_stream(splits.train, splits, train_transform(prep, spec.data), spec, plan, device, shard,
                                 keys=True)
            loader.dataset.aug_view = view
            loaders.append(loader)
    _refuse_too_many_features(len(splits.train) * max(1, views), extractor)
    return stream_feature_set(extractor, loaders, spec.data.on_bad_image)


def _refuse_too_many_features(vectors: int, extractor: Extractor) -> None:
    """DataError before streaming when the cached features would take over a quarter of the memory."""
    width = next((m.in_features for m in extractor.model.head.modules() if isinstance(m, torch.nn.Linear)), 0)
    need = vectors * width * 4
    if width and physical_memory() and need > MEMORY_SHARE * physical_memory():
        raise DataError(f"lr_policy.feature_cache: {vectors} feature vectors of {width} floats need "
                        f"{need / 1e9:.1f} GB, over a quarter of this machine's memory; set "
                        f"lr_policy.feature_cache: false (the head then trains on streamed images)")


def readers_changed(saved_plan: dict, plan: DataPlan) -> str | None:
    """Why a mid-epoch resume cannot continue the streams exactly: the run stopped with another number of readers
    (each reader's stream depends on it); None when the same, or when either side is not streamed."""
    before = (saved_plan.get("stream") or {}).get("readers")
    now = plan.stream["readers"] if plan.stream else None
    if before is None or now is None or before == now:
        return None
    return (f"last.pt stopped mid-epoch with {before} shard readers (processes x loader workers) and this run has "
            f"{now}; resume with the same data.num_workers and process count (or from an epoch boundary)")
