"""The data plan: every decision about where training and evaluation images come from, made once.

`DataPlan.resolve` reads the recipe, the device and the file lists (file headers only, no decoding),
decides the training source (a DataLoader, images resident on the device, or cached features), the
cache mode of each side, the canvas side, worker processes and the evaluation batch, and says why.
The run prints it in its header and saves it as data_plan.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from transferkit.data.cache import cache_modes, estimated_bytes, memory_budget, train_cache_size
from transferkit.data.device_augment import augments_on_device
from transferkit.data.device_bank import canvas_side_for, fits_on_device
from transferkit.data.folder import FolderSplits
from transferkit.data.loading import default_eval_batch_size, default_num_workers
from transferkit.data.shared_cache import shared_folder
from transferkit.errors import SpecError
from transferkit.model.preprocess import Preprocessing
from transferkit.recipe.check import device_contradictions, uses_feature_cache
from transferkit.recipe.spec import ExperimentSpec


@dataclass
class DataPlan:
    """Where each split's images come from and how they are batched, with the reasons."""

    train_source: str  # "loader", "device_bank" or "feature_cache"
    train_cache: str  # none, memory, disk (host-side decoded images) or device
    eval_cache: str
    train_cache_side: int  # shorter side (at most) training images are cached at
    canvas_side: int  # device bank canvas side; 0 without one
    batch_size: int
    eval_batch_size: int
    workers: int
    sampler: str
    reasons: list[str] = field(default_factory=list)
    cache_fill: str = "first use"  # when cached images are decoded: at their first use, or all at set-up
    train_cache_bytes: int = 0  # estimated size of the decoded images each cache will hold
    eval_cache_bytes: int = 0
    stream: dict | None = None  # data.source webdataset: shards, readers, steps per epoch, shuffle buffer, resume

    @staticmethod
    def refuse_contradictions(spec: ExperimentSpec, device: torch.device, processes: int = 1) -> None:
        """SpecError for settings this device cannot do (recipe.check.device_contradictions); needs no files."""
        for field_name, message in device_contradictions(spec, lambda: device.type, processes):
            raise SpecError(f"{field_name}: {message}")

    @classmethod
    def resolve(cls, spec: ExperimentSpec, device: torch.device, splits: FolderSplits,
                prep: Preprocessing, processes: int = 1) -> "DataPlan":
        """Decide everything for `spec` on `device`; SpecError for a contradiction only the device or data shows.

        `processes`: training processes on this machine, which share its cores for loader workers.
        """
        cls.refuse_contradictions(spec, device)
        d, reasons = spec.data, []
        train_side = train_cache_size(prep.train_input_size, prep.resize_size, d.crop_scale[0])
        features = uses_feature_cache(spec)
        on_device = augments_on_device(d.augment_on, device, d.cache) and not features and not d.augment.per_image
        deterministic_cuda = spec.train.deterministic and device.type == "cuda"
        side = canvas_side_for([path for path, _ in splits.train], train_side) if on_device else 0
        resident = on_device and not deterministic_cuda and (
            d.cache == "device" or device.type != "cuda"
            or fits_on_device(len(splits.train), side, d.batch_size, device))
        if on_device and not resident:
            if d.augment_on == "device":
                why = ("train.deterministic is set" if deterministic_cuda
                       else "they do not fit in a quarter of its free memory")
                raise SpecError(f"data.augment_on: device crops training images kept on the device, but {why}; "
                                f"set data.augment_on: auto or cpu")
            reasons.append("training images cropped on the CPU: " + ("deterministic CUDA" if deterministic_cuda
                                                                     else "too large for the device"))
        if d.augment.per_image and device.type == "cuda" and d.augment_on == "auto":
            reasons.append("data.augment policy/random_erasing: crops on the CPU loader")
        source = "feature_cache" if features else "device_bank" if resident else "loader"
        train_cache, eval_cache = _cache_modes(spec, splits, prep, train_side, source)
        train_cache, eval_cache, read_once = _skip_memory_caches_read_once(spec, source, train_cache, eval_cache)
        if read_once:
            reasons.append(f"{read_once} read once in {spec.train.epochs} epoch: not held in memory")
        if shared_folder() is not None and spec.data.cache == "auto" and "disk" in (train_cache, eval_cache):
            reasons.append(f"decoded images on disk in {shared_folder()}, shared with the runs beside this one")
        workers = d.num_workers if d.num_workers is not None else default_num_workers(device, processes)
        sizes = _cache_bytes(splits, prep, train_side, train_cache, eval_cache)
        reasons += _cache_reasons(train_cache, eval_cache, sizes)
        # A lazily filled memory cache lives in the process that decodes: with two or more loader workers each
        # would fill (and hold) a copy of its own, so they are filled once before the workers start instead.
        fill = "setup" if workers > 1 and "memory" in (train_cache, eval_cache) else "first use"
        if fill == "setup":
            reasons.append(f"decoded-image cache filled at set-up: {workers} loader workers would each fill a copy")
        elif workers == 0 and source != "feature_cache" and {train_cache, eval_cache} & {"memory", "disk"}:
            reasons.append("no loader workers: a thread decodes the images ahead of the loop into the cache")
        if source == "device_bank":
            workers_note = "no loader workers for training (images on the device)"
            reasons.append(workers_note)
        eval_batch = d.eval_batch_size or default_eval_batch_size(device, d.batch_size, prep.input_size)
        return cls(source, train_cache, eval_cache, train_side, side if resident else 0, d.batch_size, eval_batch,
                   workers, d.sampler, reasons, fill, *sizes)

    def describe(self) -> str:
        """One line for the run header."""
        where = {"loader": "DataLoader", "device_bank": "resident on the device", "stream": "streamed shards",
                 "feature_cache": "cached backbone features"}[self.train_source]
        canvas = f", canvases {self.canvas_side}px" if self.canvas_side else ""
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        return (f"data: train {where}{canvas}, train cache {self.train_cache}, eval cache {self.eval_cache}"
                f"{' (filled at first use)' if self.cache_fill == 'first use' and self.caches_anything else ''}, "
                f"batch {self.batch_size} ({self.sampler}), eval batch {self.eval_batch_size}, "
                f"{self.workers} worker(s){why}")

    @property
    def caches_anything(self) -> bool:
        """True when a host-side decoded-image cache (memory or disk) is used."""
        return bool({"memory", "disk"} & {self.train_cache, self.eval_cache})

    def to_dict(self) -> dict:
        """Plain data, written as data_plan.json."""
        return asdict(self)


def _skip_memory_caches_read_once(spec: ExperimentSpec, source: str, train_cache: str,
                                  eval_cache: str) -> tuple[str, str, str]:
    """(train cache, eval cache, what was dropped): data.cache auto holds no images in memory that the run
    reads only once (one epoch and no probe; one evaluation per split without EMA), as a cache would then save
    no decoding but still hold every image. Disk caches stay: a later run reads them again."""
    if spec.data.cache != "auto" or source == "feature_cache" or spec.train.epochs > 1 or spec.train.probe_epochs:
        return train_cache, eval_cache, ""
    dropped = []
    if train_cache == "memory":
        train_cache = "none"
        dropped.append("training images")
    if eval_cache == "memory" and spec.train.ema is None:
        eval_cache = "none"
        dropped.append("evaluation images")
    return train_cache, eval_cache, " and ".join(dropped)


def _cache_modes(spec: ExperimentSpec, splits: FolderSplits, prep: Preprocessing, train_side: int,
                 source: str) -> tuple[str, str]:
    """(train cache, eval cache): what `cache_modes` decides, with the device bank holding the training images."""
    requested = "auto" if spec.data.cache == "device" else spec.data.cache
    if source == "device_bank":  # only the evaluation splits go through the host-side cache
        evaluation_only = FolderSplits(splits.classes, [], splits.test, splits.val, splits.root)
        return "device", cache_modes(evaluation_only, prep, requested, train_side)[1]
    eval_view = source == "feature_cache" and spec.lr_policy.cache_views == 0
    train_mode, eval_mode = cache_modes(splits, prep, requested, None if eval_view else train_side)
    return ("eval-side" if eval_view else train_mode), eval_mode


def _cache_bytes(splits: FolderSplits, prep: Preprocessing, train_side: int, train_cache: str,
                 eval_cache: str) -> tuple[int, int]:
    """(training, evaluation) decoded-image bytes the caches will hold, estimated from a sample of file headers."""
    evaluation = [str(path) for samples in (splits.test, splits.val or []) for path, _ in samples]
    train = [str(path) for path, _ in splits.train]
    train_bytes = estimated_bytes(train, train_side, shrink_only=True) if train_cache in ("memory", "disk") else 0
    if train_cache == "eval-side":
        evaluation += train
    eval_bytes = estimated_bytes(evaluation, prep.resize_size) if eval_cache in ("memory", "disk") else 0
    return train_bytes, eval_bytes


def _cache_reasons(train_cache: str, eval_cache: str, sizes: tuple[int, int]) -> list[str]:
    """Why a side's decoded images went to disk: they take more than data.cache auto's memory budget."""
    budget = memory_budget()
    return [f"{side} images on disk: {size / 2**20:,.1f} MiB decoded, over the {budget / 2**20:,.1f} MiB kept in memory"
            for side, mode, size in (("training", train_cache, sizes[0]), ("evaluation", eval_cache, sizes[1]))
            if mode == "disk" and size > budget]
