"""The Experiment: builds each variant of a recipe from the registries, trains it, and collects results.

The CLI and scripts both go through this object, so whatever the CLI can do a script can do too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import DataLoader

from transferkit.run import report
from transferkit.model.build import build_model
from transferkit.callbacks.checkpoint import CheckpointManager
from transferkit.cpu_memory import keep_freed_memory
from transferkit.data.cache import image_decoders, train_cache_size
from transferkit.data.device_augment import augments_on_device
from transferkit.data.device_bank import DeviceBatches, DeviceImageBank, canvas_side_for, fits_on_device
from transferkit.data.folder import FolderSplits
from transferkit.data.loading import ImageFileDataset, default_eval_batch_size, default_num_workers, make_loader
from transferkit.data.transforms import eval_transform, train_transform
from transferkit.engine.placement import describe_device, resolve_device, resolve_precision
from transferkit.engine.trainer import Interrupted, Trainer
from transferkit.errors import NotRegisteredError, SpecError
from transferkit.data.features import train_on_features, uses_feature_cache
from transferkit.optim.lr_policies import build_param_groups, describe_groups
from transferkit.model.transfer import TransferModel
from transferkit.optim.optimizers import build_optimizer
from transferkit.optim.schedules import build_scheduler
from transferkit.model.preprocess import Preprocessing
from transferkit.progress import Progress
from transferkit.plugins import load_plugins
from transferkit.registry import DATASETS, HEADS, LR_POLICIES, OPTIMIZERS, WEIGHT_SOURCES
from transferkit.files import atomic_write_text
from transferkit.run.rundir import prepare_run_dir, write_metrics
from transferkit.seeding import seed_epoch, seed_everything
from transferkit.signals import GracefulStop, RunInterrupted
from transferkit.run.preflight import check_references, preflight  # noqa: F401  (check_references: moved there)
from transferkit.recipe.spec import ExperimentSpec, apply_overrides, dump_yaml, load_recipe, validate, variant_names, variant_of


@dataclass
class VariantResult:
    """One trained variant: its per-epoch metrics, parameter groups, time and run directory."""

    name: str
    history: list[dict]
    param_groups: list[dict]
    seconds: float
    run_dir: Path
    skipped_images: list[str] = field(default_factory=list)

    @property
    def final(self) -> dict:
        """The last epoch's metrics."""
        return self.history[-1] if self.history else {}

    @property
    def best_test_accuracy(self) -> float:
        """The highest test accuracy over the epochs."""
        return max((row["test_accuracy"] for row in self.history), default=float("nan"))

    def summary(self) -> dict:
        """Plain-data summary written as summary.json."""
        return {"name": self.name, "epochs": len(self.history), "final": self.final,
                "best_test_accuracy": self.best_test_accuracy, "seconds": self.seconds,
                "param_groups": self.param_groups, "skipped_images": self.skipped_images}


@dataclass
class ExperimentResult:
    """All variants of one experiment, in run order, and where they were written."""

    name: str
    variants: dict[str, VariantResult]
    run_root: Path

    def __getitem__(self, name: str) -> VariantResult:
        return self.variants[name]


@dataclass
class Built:
    """Everything a variant needs to train, built from its spec."""

    spec: ExperimentSpec
    model: TransferModel
    preprocessing: Preprocessing
    splits: FolderSplits
    param_groups: list[dict]
    weights: str


def load_splits(spec: ExperimentSpec) -> FolderSplits:
    """The dataset the recipe names, resolved to labelled files (trimmed to data.limit if set)."""
    splits = DATASETS.get(spec.data.dataset)(spec.data, spec.seed)
    if spec.data.limit:
        generator = torch.Generator().manual_seed(spec.seed)

        def trim(samples):
            if samples is None or len(samples) <= spec.data.limit:
                return samples
            keep = sorted(torch.randperm(len(samples), generator=generator)[: spec.data.limit].tolist())
            return [samples[i] for i in keep]

        splits.train, splits.test, splits.val = trim(splits.train), trim(splits.test), trim(splits.val)
    return splits


def build_variant(spec: ExperimentSpec) -> Built:
    """Backbone with weights, new head, data splits and parameter groups for one variant spec."""
    seed_everything(spec.seed, spec.train.deterministic)
    splits = load_splits(spec)
    built = build_model(spec, len(splits.classes))
    groups = build_param_groups(built.model, spec.lr_policy, spec.optimizer.lr)
    return Built(spec, built.model, built.preprocessing, splits, groups, built.weights_origin)


class Experiment:
    """A recipe ready to run: `Experiment.from_yaml(path).run()` trains every variant and compares them."""

    def __init__(self, spec: ExperimentSpec, source: str = "recipe", overrides: list[str] | None = None):
        load_plugins()
        self.spec = spec
        self.source = source
        # validate and run refuse the same recipes, before any image is read
        preflight({name: self.variant_spec(name) for name in self.variant_names}, source, overrides)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "Experiment":
        """Load and validate a recipe file (or registered recipe name), with `--set`-style overrides."""
        load_plugins()  # a plugin may register the recipe name
        return cls(load_recipe(path, overrides), source=str(path), overrides=overrides)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], overrides: list[str] | None = None) -> "Experiment":
        """Validate a recipe given as a plain dict."""
        return cls(validate(apply_overrides(raw, overrides or []), overrides=overrides), source="recipe",
                   overrides=overrides)

    @property
    def variant_names(self) -> list[str]:
        """The base run's name, then each variant's."""
        return variant_names(self.spec)

    def variant_spec(self, name: str) -> ExperimentSpec:
        """The full spec of one variant."""
        return variant_of(self.spec, name, source=self.source)

    def run(self, variants: list[str] | None = None, output_dir: str | Path | None = None,
            device: str | None = None, console: Console | None = None, progress: bool = True,
            resume: str | Path | None = None) -> ExperimentResult:
        """Train the chosen variants (default: all) one after another; print and save a comparison."""
        console = console or Console(stderr=True)
        names = variants or self.variant_names
        specs = [self.variant_spec(n) for n in names]  # validate all before training any
        if resume:
            run_root = Path(resume)
        else:
            run_root = fresh_run_root(Path(output_dir or self.spec.output_dir), self.spec.name)
        results: dict[str, VariantResult] = {}
        with GracefulStop(lambda message: console.print(f"[yellow]{message}[/]")) as stop:
            for name, spec in zip(names, specs):
                if device:
                    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"device": device})})
                results[name] = run_variant(spec, name, run_root / name, console, progress,
                                            resume=bool(resume), should_stop=stop.is_requested)
        result = ExperimentResult(self.spec.name, results, run_root)
        report.write_comparison(result)
        report.print_comparison(result, console)
        return result


def fresh_run_root(output_dir: Path, name: str) -> Path:
    """output_dir/name, or name-2, name-3, ... when earlier runs are there: nothing is overwritten."""
    candidate, n = output_dir / name, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = output_dir / f"{name}-{n}"
    return candidate


def latest_unfinished_run(output_dir: Path, name: str) -> Path | None:
    """The most recently changed run folder of experiment `name` that has no final comparison yet."""
    candidates = [p for p in [output_dir / name, *output_dir.glob(f"{name}-*")]
                  if p.is_dir() and not (p / "comparison.json").exists()]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def _channels_last(spec: ExperimentSpec, model: TransferModel, device: torch.device) -> bool:
    if spec.train.channels_last == "auto":
        return model.is_convolutional and device.type in ("cuda", "cpu")
    return bool(spec.train.channels_last)


@dataclass
class Loaders:
    """A variant's train, test and (optional) val DataLoaders, and the worker processes each uses."""

    train: DataLoader | DeviceBatches  # DeviceBatches: training images resident on the device (data.cache: device)
    test: DataLoader
    val: DataLoader | None
    workers: int


def build_loaders(spec: ExperimentSpec, built: Built, device: torch.device) -> Loaders:
    """The decoded-image cache, datasets and DataLoaders a variant trains and evaluates on."""
    d, prep, splits = spec.data, built.preprocessing, built.splits
    on_device = augments_on_device(d.augment_on, device, d.cache) and not uses_feature_cache(spec)
    if d.cache == "device" and not on_device:
        raise SpecError("data.cache: device crops training images on the device, which a frozen-backbone feature "
                        "cache does not do; set data.cache: auto")
    # torchvision's roi_align falls back to a pure-Python version under deterministic algorithms on CUDA, one that
    # materialises every canvas for every output pixel: far too large. Deterministic CUDA runs crop on the CPU.
    deterministic_cuda = spec.train.deterministic and device.type == "cuda"
    if d.cache == "device" and deterministic_cuda:
        raise SpecError("data.cache: device cannot crop deterministically on CUDA; set data.cache: auto (the CPU "
                        "crops) or train.deterministic: false")
    train_size = train_cache_size(prep.input_size, prep.resize_size, d.crop_scale[0])
    side = canvas_side_for([path for path, _ in splits.train], train_size) if on_device else 0  # reads every header
    resident = on_device and not deterministic_cuda and (
        d.cache == "device" or device.type != "cuda" or fits_on_device(len(splits.train), side, d.batch_size, device))
    if on_device and not resident:
        if d.augment_on == "device":
            why = "train.deterministic is set" if deterministic_cuda else "they do not fit in a quarter of its free memory"
            raise SpecError(f"data.augment_on: device crops training images kept on the device, but {why}; "
                            f"set data.augment_on: auto or cpu")
        on_device = False
    if resident:  # only the evaluation splits go through the host-side cache
        splits = FolderSplits(splits.classes, [], splits.test, splits.val, splits.root)
    eval_view_features = uses_feature_cache(spec) and spec.lr_policy.cache_views == 0
    train_decode, eval_decode = image_decoders(splits, prep, "auto" if d.cache == "device" else d.cache, d.on_bad_image,
                                               None if eval_view_features else train_size)
    test_ds = ImageFileDataset(splits.test, eval_transform(prep), eval_decode)
    val_ds = ImageFileDataset(splits.val, eval_transform(prep), eval_decode) if splits.val else None
    workers = d.num_workers if d.num_workers is not None else default_num_workers(device)
    eval_batch = d.eval_batch_size or default_eval_batch_size(device, d.batch_size)
    if resident:
        bank = DeviceImageBank.build(built.splits.train, train_size, prep.interpolation, device, d.on_bad_image, side=side)
        train = DeviceBatches(bank, d.batch_size, spec.seed, d.crop_scale, d.crop_ratio, d.hflip)
    else:
        train_ds = ImageFileDataset(splits.train, train_transform(prep, d), train_decode)
        train = make_loader(train_ds, d.batch_size, True, spec.seed, workers, device)
    return Loaders(train,
                   make_loader(test_ds, eval_batch, False, spec.seed, workers, device),
                   make_loader(val_ds, eval_batch, False, spec.seed, workers, device) if val_ds else None,
                   workers)


def run_variant(spec: ExperimentSpec, name: str, run_dir: Path, console: Console, progress: bool = True,
                resume: bool = False, should_stop=lambda: False) -> VariantResult:
    """Build, train and evaluate one variant, writing its run directory as it goes."""
    summary_path = run_dir / "summary.json"
    if resume and summary_path.is_file():
        console.print(f"[bold]{name}[/]: finished already in {run_dir}; not re-trained")
        return report.result_from_summary(name, run_dir)
    device = resolve_device(spec.train.device)
    precision = resolve_precision(spec.train.precision, device)
    if device.type == "cpu":
        keep_freed_memory()  # activations are reused from the heap instead of page-faulted in every step
    prepare_run_dir(run_dir)
    built = build_variant(spec)
    model = built.model
    channels_last = _channels_last(spec, model, device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = build_optimizer(spec.optimizer, built.param_groups)
    data = build_loaders(spec, built, device)
    train_loader, test_loader, val_loader = data.train, data.test, data.val
    scheduler = build_scheduler(spec.schedule, optimizer, len(train_loader), spec.train.epochs)
    # dynamic=False: the short last batch and evaluation get static graphs of their own; the automatic dynamic-shape
    # graph a second batch size would otherwise switch every step to was no faster than eager on an H200.
    compiled = torch.compile(model, dynamic=False) if spec.train.compile else None
    trainer = Trainer(model, optimizer, scheduler, device, precision, spec.train.loss_reduction,
                      spec.train.label_smoothing, channels_last, spec.data.on_bad_image,
                      Progress(console, enabled=progress), compiled, built.preprocessing.input_size)
    if uses_feature_cache(spec):
        trainer, train_loader, test_loader, val_loader = train_on_features(
            trainer, spec, data.train.dataset, data.test.dataset, data.val and data.val.dataset, data.workers, console)
    groups = describe_groups(built.param_groups)
    checkpoints = CheckpointManager(run_dir, spec, built.splits.classes, built.preprocessing)

    history: list[dict] = []
    skipped: list[str] = []
    start_epoch, elapsed, partial = 1, 0.0, None
    if resume:
        restored = checkpoints.restore_last(trainer)
        if restored:
            history, skipped, elapsed = restored["history"], restored["skipped"], restored["seconds"]
            start_epoch, partial = restored["epoch"] + 1, restored.get("partial")
            where = f"step {partial['step']} of epoch {start_epoch}" if partial else f"epoch {start_epoch}"
            console.print(f"[bold]{name}[/]: resuming at {where} from {run_dir / 'last.pt'}")

    atomic_write_text(run_dir / "spec.yaml", dump_yaml(spec))
    atomic_write_text(run_dir / "param_groups.json", json.dumps(groups, indent=2))
    _print_header(console, name, spec, built, device, precision, channels_last, groups, run_dir)

    for epoch in range(start_epoch, spec.train.epochs + 1):
        started = time.perf_counter()
        if partial is None:
            seed_epoch(spec.seed, epoch)  # a resumed partial epoch continues from the saved RNG state instead
        train_loader.sampler.set_epoch(epoch, skip=partial["step"] * spec.data.batch_size if partial else 0)
        try:
            train = trainer.train_epoch(train_loader, epoch, spec.train.epochs, partial, should_stop)
        except Interrupted as stop:
            checkpoints.save(trainer, epoch - 1, history, skipped, elapsed, partial=stop.partial)
            raise RunInterrupted(run_dir.parent, name, epoch) from None
        partial = None
        test = trainer.evaluate(test_loader, "test")
        row = {"epoch": epoch, "train_loss": train.loss, "train_accuracy": train.accuracy,
               "test_loss": test.loss, "test_accuracy": test.accuracy}
        if val_loader is not None:
            val = trainer.evaluate(val_loader, "val")
            row.update(val_loss=val.loss, val_accuracy=val.accuracy)
        elapsed += time.perf_counter() - started
        row.update(train_images_per_s=train.images_per_s, lr=optimizer.param_groups[0]["lr"],
                   epoch_seconds=time.perf_counter() - started, elapsed_seconds=elapsed)
        for bad in train.bad + test.bad:
            if bad.path not in skipped:
                skipped.append(bad.path)
                console.print(f"[yellow]skipped unreadable image[/] {bad.message}")
        history.append(row)
        write_metrics(run_dir, history)
        if spec.train.checkpoint:
            checkpoints.save(trainer, epoch, history, skipped, elapsed)
        console.print(report.epoch_line(name, row, spec.train.epochs))
        if should_stop() and epoch < spec.train.epochs:
            raise RunInterrupted(run_dir.parent, name, epoch + 1)

    result = VariantResult(name, history, groups, elapsed, run_dir, skipped)
    atomic_write_text(summary_path, json.dumps(result.summary(), indent=2))
    return result


def _print_header(console: Console, name: str, spec: ExperimentSpec, built: Built, device, precision: str,
                  channels_last: bool, groups: list[dict], run_dir: Path) -> None:
    s = built.splits
    console.print(f"[bold]{name}[/]: {spec.backbone.name} ({built.weights}) + {spec.head.name} head, "
                  f"{len(s.classes)} classes, {len(s.train)} train / {len(s.test)} test images, "
                  f"{built.preprocessing.input_size}px, on {describe_device(device)}, {precision}"
                  f"{', channels_last' if channels_last else ''} -> {run_dir}")
    for g in groups:
        console.print(f"  param group {g['name']:<24} {g['params']:>11,} params  lr {g['lr']:.3g}")
