"""Linear probe, then fine-tune (LP-FT): fit the new head on cached features of the frozen backbone before
the whole network trains, so fine-tuning starts from a head that already classifies (train.probe_epochs)."""

from __future__ import annotations

import time

import torch
from rich.console import Console

from transferkit.data.features import Extractor, cached_split, feature_loader
from transferkit.data.images import open_rgb
from transferkit.data.loading import ImageFileDataset
from transferkit.data.shard_index import ShardSplits
from transferkit.data.stream_loaders import train_feature_set
from transferkit.data.transforms import eval_transform
from transferkit.engine.optimization import Optimization
from transferkit.engine.trainer import Trainer
from transferkit.run.assemble import Assembled


def probe_head(parts: Assembled, console: Console) -> float:
    """Train `parts`' head alone on eval-view features for train.probe_epochs epochs (AdamW at train.probe_lr,
    cosine); the backbone is untouched. Returns the seconds it took."""
    spec, trainer = parts.spec, parts.trainer
    started = time.perf_counter()
    model = trainer.model
    extractor = Extractor(model, parts.device, parts.precision, parts.channels_last)
    if isinstance(parts.splits, ShardSplits):  # streamed once, each image's eval-view features kept
        features = train_feature_set(extractor, spec, parts.plan, parts.splits, parts.preprocessing, parts.device,
                                     views=0)
    else:
        decode = getattr(getattr(parts.train_loader, "dataset", None), "decode", open_rgb)
        source = ImageFileDataset(parts.splits.train, eval_transform(parts.preprocessing), decode)
        features = cached_split(extractor, source, 1, parts.plan.eval_batch_size, spec.seed, parts.plan.workers,
                                parts.caches.features if parts.caches else None)
    loader = feature_loader(features, spec.data.batch_size, True, spec.seed)
    epochs = spec.train.probe_epochs
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=spec.train.probe_lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    head_trainer = Trainer(model, Optimization(optimizer, scheduler, device=parts.device,
                                               criterion=parts.task.criterion()),
                           device=parts.device, seed=spec.seed, forward=model.head, on_bad_image="skip",
                           task=parts.task)
    frozen = model.freeze_backbone
    model.set_backbone_frozen(True)
    try:
        for epoch in range(1, epochs + 1):
            loader.sampler.set_epoch(epoch)
            stats = head_trainer.train_epoch(loader, epoch, epochs)
    finally:
        model.set_backbone_frozen(frozen)
    seconds = time.perf_counter() - started
    reused = f" ({features.reused} reused from an earlier run)" if features.reused else ""
    console.print(f"  linear probe: head fitted on {len(features)} cached feature vectors{reused} for {epochs} epochs "
                  f"(train {parts.task.train_metric.replace('_', ' ')} {stats.metrics[parts.task.train_metric]:.3f}) "
                  f"in {seconds:.1f}s; now fine-tuning the whole network",
                  highlight=False)
    return seconds
