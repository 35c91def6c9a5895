"""Put one variant together: seed -> splits -> model -> data plan -> loaders -> optimization -> trainer.

`assemble` is shared by `transferkit run`, `lr-find` and the benchmarks, so each trains with the same
pieces; only what is around the trainer (callbacks, run directory) differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rich.console import Console

from transferkit.data.balance import balanced_weights, loss_weights
from transferkit.data.cache import image_decoders, with_read_ahead
from transferkit.data.device_bank import DeviceBatches, DeviceImageBank
from transferkit.data.features import Extractor, cache_features
from transferkit.data.folder import FolderSplits
from transferkit.data.loading import ImageFileDataset, available_cores, make_loader
from transferkit.data.plan import DataPlan
from transferkit.data.shard_index import ShardSplits, training_targets
from transferkit.data.shared import SharedCaches
from transferkit.data.splits import recipe_splits
from transferkit.data.stream_loaders import stream_loaders, stream_plan
from transferkit.data.transforms import batch_mixer, eval_transform, train_transform
from transferkit.device import resolve_device, resolve_precision
from transferkit.engine.callbacks import Callback
from transferkit.engine.optimization import Optimization
from transferkit.engine.placement import Placement
from transferkit.engine.trainer import Trainer
from transferkit.errors import SpecError
from transferkit.model.build import build_from_checkpoint, build_model
from transferkit.model.preprocess import Preprocessing
from transferkit.model.transfer import TransferModel
from transferkit.optim.lr_policies import build_param_groups
from transferkit.optim.optimizers import build_optimizer
from transferkit.optim.schedules import build_scheduler
from transferkit.progress import Progress
from transferkit.recipe.check import selection_metric, uses_feature_cache
from transferkit.run.batch_size import MAX_AUTO, measure, optimizer_slots, resolve_batch_size
from transferkit.recipe.spec import ExperimentSpec
from transferkit.seeding import seed_everything
from transferkit.tasks import Task, build_task, task_class


def load_splits(spec: ExperimentSpec) -> FolderSplits:
    """The dataset the recipe names, resolved to labelled files (see data.splits.recipe_splits)."""
    return recipe_splits(spec)


def check_against_data(spec: ExperimentSpec, splits: FolderSplits) -> None:
    """SpecError for settings the data contradicts: a validation metric without a validation split."""
    metric = selection_metric(spec, bool(splits.val), task_class(spec.task.name).default_metric)
    if metric and metric.startswith("val_") and not splits.val:
        raise SpecError(f"train.best_metric: {metric} needs a validation split, and the data has none; set "
                        f"data.val_split: 0.1 (or add a val/ folder), or choose a test_ metric explicitly")


def channels_last_for(spec: ExperimentSpec, model: TransferModel, device: torch.device) -> bool:
    """train.channels_last resolved: auto means for convolutional backbones on CUDA and CPU."""
    if spec.train.channels_last == "auto":
        return model.is_convolutional and device.type in ("cuda", "cpu")
    return bool(spec.train.channels_last)


@dataclass
class Built:
    """A variant's model with its weights, the preprocessing they expect, its data splits and parameter groups."""

    spec: ExperimentSpec
    model: TransferModel
    preprocessing: Preprocessing
    splits: FolderSplits
    param_groups: list[dict]
    weights_origin: str
    parent: dict | None = None  # train.init_from: the checkpoint the weights came from


def build_variant(spec: ExperimentSpec) -> Built:
    """Seed, splits, model (weights loaded) and the LR policy's parameter groups of one variant spec."""
    seed_everything(spec.seed, spec.train.deterministic)
    splits = load_splits(spec)
    check_against_data(spec, splits)
    built = build_from_checkpoint(spec, splits.classes) if spec.train.init_from else \
        build_model(spec, len(splits.classes))
    groups = build_param_groups(built.model, spec.lr_policy, spec.optimizer.lr)
    return Built(spec, built.model, built.preprocessing, splits, groups, built.weights_origin, built.parent)


@dataclass
class Assembled:
    """A variant ready to fit: its trainer, loaders, data plan and what the header reports."""

    spec: ExperimentSpec
    trainer: Trainer
    train_loader: object
    eval_loaders: dict
    plan: DataPlan
    splits: FolderSplits
    preprocessing: Preprocessing
    param_groups: list[dict]
    weights_origin: str
    device: torch.device
    precision: str
    channels_last: bool
    selection: str | None
    placement: Placement
    task: Task
    caches: SharedCaches | None = None
    parent: dict | None = None  # train.init_from: the checkpoint the weights came from
    class_weights: list[float] | None = None  # the loss's per-class weights (train.class_weights), as computed


def build_loaders(spec: ExperimentSpec, plan: DataPlan, splits: FolderSplits, prep: Preprocessing,
                  device: torch.device, channels_last: bool, model: TransferModel, precision: str,
                  console: Console, placement: Placement | None = None,
                  caches: SharedCaches | None = None) -> tuple[object, dict]:
    """The training loader (DataLoader, device-resident batches, streamed shards or cached features) and one loader
    per eval split, each holding this process's share (`placement`); `caches`: decoded images and features shared
    with the other runs of this process."""
    d = spec.data
    placement = placement or Placement()
    shard = placement.shard
    if isinstance(splits, ShardSplits):
        extractor = Extractor(model, device, precision, channels_last, placement)
        return stream_loaders(spec, plan, splits, prep, device, extractor, shard)
    weights = balanced_weights([label for _, label in splits.train]) if d.sampler == "balanced" else None
    train_size = None if plan.train_cache == "eval-side" else plan.train_cache_side
    host_train = "none" if plan.train_cache in ("device", "eval-side") else plan.train_cache
    host_splits = FolderSplits(splits.classes, [], splits.test, splits.val, splits.root) \
        if plan.train_source == "device_bank" else splits
    train_decode, eval_decode = image_decoders(host_splits, prep, "auto", d.on_bad_image, train_size,
                                               modes=(host_train, plan.eval_cache),
                                               fill_now=plan.cache_fill == "setup",
                                               memo=caches.decoded if caches else None)
    eval_sets = {"test": ImageFileDataset(splits.test, eval_transform(prep), eval_decode)}
    if splits.val:
        eval_sets["val"] = ImageFileDataset(splits.val, eval_transform(prep), eval_decode)
    if plan.train_source == "feature_cache":
        train_ds = ImageFileDataset(splits.train, train_transform(prep, d), train_decode)
        extractor = Extractor(model, device, precision, channels_last, placement)
        return cache_features(extractor, spec, train_ds, eval_sets, plan.eval_batch_size, plan.workers, console,
                              weights, shard, caches.features if caches else None)
    if plan.train_source == "device_bank":
        threads = max(1, available_cores() // placement.local_world_size)  # this machine's processes share its cores
        bank = DeviceImageBank.build(splits.train, plan.train_cache_side, prep.interpolation, device, d.on_bad_image,
                                     threads=threads, side=plan.canvas_side)
        train = DeviceBatches(bank, d.batch_size, spec.seed, d.crop_scale, d.crop_ratio, d.hflip, weights,
                              crop_size=prep.train_input_size, channels_last=channels_last, shard=shard)
    else:
        train_ds = ImageFileDataset(splits.train, train_transform(prep, d), train_decode)
        train = with_read_ahead(make_loader(train_ds, d.batch_size, True, spec.seed, plan.workers, device, weights,
                                            shard), train_decode)
    evals = {split: with_read_ahead(make_loader(ds, plan.eval_batch_size, False, spec.seed, plan.workers, device,
                                                shard=shard), eval_decode)
             for split, ds in eval_sets.items()}
    return train, evals


def flip_splits(spec: ExperimentSpec) -> tuple[str, ...]:
    """The splits evaluated with test-time flip: the test split under train.tta_flip, and validation (selection)
    only when train.tta_on_val asks."""
    t = spec.train
    return (("test",) + (("val",) if t.tta_on_val else ())) if t.tta_flip else ()


def per_epoch_splits(spec: ExperimentSpec, eval_loaders: dict) -> tuple[str, ...]:
    """The splits evaluated after every epoch: validation, and the test split unless train.eval_test is `end`."""
    return tuple(split for split in eval_loaders if split != "test" or spec.train.eval_test == "every_epoch")


def with_batch_size(spec: ExperimentSpec, model: TransferModel, input_size: int, device: torch.device,
                    channels_last: bool, train_images: int) -> ExperimentSpec:
    """`spec` with data.batch_size: auto resolved, and a fixed batch of 64 or more checked against free memory
    (a cached-feature probe trains on features, so its batch needs no such check)."""
    requested = spec.data.batch_size
    if uses_feature_cache(spec):
        resolved = min(MAX_AUTO, train_images) if requested == "auto" else requested
    elif requested == "auto" or requested >= 64:
        estimate = measure(model, input_size, device, optimizer_slots(spec.optimizer.name, spec.optimizer.momentum),
                           channels_last)
        resolved = resolve_batch_size(requested, estimate, train_images)
    else:
        return spec
    return spec.model_copy(update={"data": spec.data.model_copy(update={"batch_size": resolved})})


def assemble(spec: ExperimentSpec, console: Console, progress: bool = True,
             callbacks: list[Callback] | None = None, placement: Placement | None = None,
             before_data=None, caches: SharedCaches | None = None) -> Assembled:
    """Everything one variant trains with, built from its spec (weights loaded, caches filled), for this
    process of `placement` (default: the only one). `before_data(model, optimizer)` runs once both exist,
    before the data is read and cached (the check that the checkpoints will fit on the disk). `caches`: memory
    caches shared with the other runs of this process (the folds of `cv`)."""
    placement = placement or Placement()
    placement.check_batch(spec.data.batch_size)
    device = placement.device(resolve_device(spec.train.device))
    DataPlan.refuse_contradictions(spec, device, placement.world_size if placement.distributed else 1)
    precision = resolve_precision(spec.train.precision, device)
    built = build_variant(spec)
    model, splits, groups = built.model, built.splits, built.param_groups
    class_weights = loss_weights(spec.train.class_weights, spec.train.class_weight_power, training_targets(splits),
                                 splits.classes)
    model.set_norm_statistics_frozen(spec.train.freeze_bn_stats)
    channels_last = channels_last_for(spec, model, device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    spec = with_batch_size(spec, model, built.preprocessing.train_input_size, device, channels_last, len(splits.train))
    optimizer = build_optimizer(spec.optimizer, groups)
    if before_data is not None:
        before_data(model, optimizer)
    task = build_task(spec, splits.classes)
    task.prepare(training_targets(splits))
    if isinstance(splits, ShardSplits):
        plan = stream_plan(spec, device, splits, placement.local_world_size, placement.world_size)
    else:
        plan = DataPlan.resolve(spec, device, splits, built.preprocessing, placement.local_world_size)
    train_loader, eval_loaders = build_loaders(spec, plan, splits, built.preprocessing, device, channels_last, model,
                                               precision, console, placement, caches)
    updates = Optimization.updates_per_epoch(len(train_loader), spec.train.accumulate_steps)
    scheduler = build_scheduler(spec.schedule, optimizer, updates, spec.train.epochs)
    optimization = Optimization(optimizer, scheduler, device=device, precision=precision,
                                loss_reduction=spec.train.loss_reduction,
                                criterion=task.criterion(class_weights), accumulate_steps=spec.train.accumulate_steps,
                                clip_grad_norm=spec.train.clip_grad_norm)
    features = uses_feature_cache(spec)
    trained = model.head if features else model
    wrapped = placement.wrap(trained, spec.train.sync_batchnorm, find_unused=bool(spec.train.freeze_epochs))
    if features:
        forward, eval_forward = wrapped, trained
    else:
        # dynamic=False: the short last batch and evaluation get static graphs of their own (docs/performance.md).
        forward = torch.compile(wrapped, dynamic=False) if spec.train.compile else wrapped
        eval_forward = (torch.compile(model, dynamic=False) if spec.train.compile else model) \
            if placement.distributed else forward
    trainer = Trainer(model, optimization, device=device, seed=spec.seed, precision=precision, forward=forward,
                      eval_forward=eval_forward, placement=placement,
                      channels_last=channels_last and not features,
                      batch_transform=batch_mixer(spec.data, len(splits.classes)), callbacks=callbacks or [],
                      progress=Progress(console, enabled=progress), on_bad_image=spec.data.on_bad_image,
                      flip_splits=flip_splits(spec), task=task)
    return Assembled(spec, trainer, train_loader, eval_loaders, plan, splits, built.preprocessing, groups,
                     built.weights_origin, device, precision, channels_last,
                     selection_metric(spec, bool(splits.val), task.default_metric), placement, task, caches,
                     built.parent, None if class_weights is None else [round(w, 6) for w in class_weights.tolist()])
