"""The recipe's schema: the pydantic models of an experiment, with the checks each field makes on its own value.

Reading files, `--set` overrides and variants live in recipe/load.py, recipe/overrides.py and recipe/variants.py;
the checks across fields and against the environment are the phases of run/validation.py.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_serializer, model_validator

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackboneSpec(_Spec):
    """Which network extracts the features, and with which weights."""

    name: str = Field("resnet18", description="torchvision name (resnet18), timm/<name>[.<tag>], or a registered name")
    pretrained: bool = Field(True, description="load pretrained weights (the model's default weights unless `weights` names others)")
    weights: str | None = Field(None, description="torchvision weights name (IMAGENET1K_V1), timm tag, registered weight source, or a .pth/.pt/.safetensors file (relative to the recipe file's folder; with --set, to the working directory)")


class HeadSpec(_Spec):
    """The freshly initialised classifier on top of the backbone's features."""

    name: str = Field("linear", description="a registered head (see `transferkit list-heads`)")
    hidden: int = Field(512, gt=0, description="hidden width of the mlp head")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the head's last layer")
    options: dict[str, Any] = Field(default_factory=dict, description="settings of a registered head that declares its own options (checked against them when the recipe is read)")


class AugmentSpec(_Spec):
    """Augmentation beyond crop and flip: a per-image policy, random erasing, and batch mixing."""

    policy: Literal["none", "trivialaugment", "randaugment", "autoaugment"] = Field("none", description="per-image torchvision.transforms.v2 policy, applied in the CPU loader")
    random_erasing: float = Field(0.0, ge=0.0, le=1.0, description="probability of erasing a random rectangle of each training image (CPU loader)")
    mixup: float = Field(0.0, ge=0.0, description="MixUp alpha (0: off); a batch op, so it works on device-resident images too")
    cutmix: float = Field(0.0, ge=0.0, description="CutMix alpha (0: off); with mixup too, each batch picks one of the two")

    @property
    def per_image(self) -> bool:
        """True when some augmentation runs image by image in the CPU loader."""
        return self.policy != "none" or self.random_erasing > 0

    @property
    def mixes_batches(self) -> bool:
        """True when MixUp or CutMix blends the images of a batch."""
        return self.mixup > 0 or self.cutmix > 0


class LabelTableSpec(_Spec):
    """A table (CSV) of image paths and their labels, instead of one folder per class."""

    file: str = Field(description="the CSV file (relative to the recipe file's folder; with --set, to the working directory); image paths in it are relative to its own folder")
    path_column: str = Field("path", description="the column holding each image's path")
    columns: list[str] | None = Field(None, min_length=1, description="label columns; default: `label` when the table has one, else every column but the path and split columns")
    delimiter: str = Field("|", min_length=1, description="multi_label: separator of the labels in one cell (cat|dog)")
    split_column: str = Field("split", description="optional column naming each row's split (train, val, test); without it the splits are carved with the seed (data.split_ratio, data.val_split)")


class ShardUrlsSpec(_Spec):
    """Where WebDataset shards are, per split (data.source: webdataset), and the index `transferkit shard` wrote."""

    train: str | list[str] = Field(description="training shards: a brace pattern (train-{000000..000099}.tar), a list, local paths (relative to the recipe file's folder), http(s):// or any fsspec URL")
    test: str | list[str] = Field(description="test shards, in the same forms")
    val: str | list[str] | None = Field(None, description="optional validation shards, in the same forms")
    index: str | None = Field(None, description="the index JSON (images per shard and per class, classes, task); default: index.json beside the first training shard")

    def of(self, split: str) -> str | list[str] | None:
        """The URLs of `split` (train, val or test) as written."""
        return getattr(self, split)


class KFoldSpec(_Spec):
    """One fold of a K-fold split of the training data (`transferkit cv` writes one per fold run)."""

    folds: int = Field(ge=2, le=100, description="K: the training images (and any validation folder's) are dealt into K parts, stratified by class for single_label")
    index: int = Field(ge=1, description="which part (1..K) is this run's validation split; the other K-1 parts train")
    group_regex: str | None = Field(None, description="images whose file names give the same group (the regex's first capture group, else its whole match) stay in one part: near-duplicates never straddle train and validation; a name it does not match is a group of its own")
    group_column: str | None = Field(None, description="with data.labels: the table column naming each image's group (kept in one part)")

    @field_validator("group_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        """A regex that does not compile is refused when the recipe is read."""
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression ({exc}); e.g. '^(.+)_\\d+' groups photo_1.jpg with photo_2.jpg") from None
        return value

    @model_validator(mode="after")
    def _index_in_range(self) -> "KFoldSpec":
        """index names one of the K parts; one way of grouping at a time."""
        if self.index > self.folds:
            raise ValueError(f"index {self.index} is past the {self.folds} folds; use 1..{self.folds}")
        if self.group_regex and self.group_column:
            raise ValueError("group_regex and group_column both set; keep one")
        return self


class DataSpec(_Spec):
    """Where the images come from and how they are turned into tensors."""

    source: Literal["files", "webdataset"] = Field("files", description="files: image files (data.dataset, data.root, data.labels); webdataset: tar shards streamed from data.urls (docs/shards.md)")
    urls: "ShardUrlsSpec | None" = Field(None, description="data.source webdataset: {train, test, val (optional), index (optional)}: each split's shards as a brace pattern (train-{000000..000099}.tar), a list, local paths (relative to the recipe file's folder), http(s):// or fsspec URLs; index: the index.json `transferkit shard` wrote (default: beside the first training shard)")
    shuffle_buffer: int = Field(1000, ge=1, description="data.source webdataset: training samples (still encoded) held in each loader worker's shuffle buffer; memory is about this x the mean image file size per worker")
    dataset: str = Field("folder", description="a registered dataset: folder, or one a plugin adds (see `transferkit list-datasets`)")
    root: str | None = Field(None, description="data folder (relative to the recipe file's folder; with --set, to the working directory); for downloadable datasets, an existing copy (no download)")
    labels: "LabelTableSpec | None" = Field(None, description="a label table (CSV) listing the images and their labels, instead of class folders: a file name, or {file, path_column, columns, delimiter, split_column}")
    train_dir: str = Field("train", description="sub-folder of root with the training images")
    test_dir: str = Field("test", description="sub-folder of root with the test images")
    val_dir: str = Field("val", description="optional sub-folder of root with validation images (for the default val, also validation/ or valid/)")
    split_ratio: float | None = Field(None, gt=0.0, lt=1.0, description="test share when root holds the class folders directly")
    image_size: int | None = Field(None, gt=0, description="training/eval crop size in pixels; default: the weights' own")
    train_image_size: int | None = Field(None, gt=0, description="training crop size when it should differ from image_size: smaller trains faster, and evaluating at the larger image_size recovers most of the accuracy (FixRes); default: image_size")
    resize_size: int | None = Field(None, gt=0, description="eval resize of the shorter side; default: image_size x the weights' resize/crop ratio")
    mean: tuple[float, float, float] | None = Field(None, description="normalisation mean; default: the weights' own")
    std: tuple[float, float, float] | None = Field(None, description="normalisation std; default: the weights' own")
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = Field(None, description="resize interpolation; default: the weights' own")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop area range for training")
    crop_ratio: tuple[float, float] = Field((0.75, 4.0 / 3.0), description="RandomResizedCrop aspect range for training")
    hflip: bool = Field(True, description="random horizontal flip for training")
    augment_on: Literal["auto", "cpu", "device"] = Field(
        "auto", description="where training crops and flips are resampled: cpu (the loader), device (training images "
                            "kept on the accelerator, cropped there in batches), or auto (device on CUDA when cache is "
                            "auto or device and they fit, else cpu); a frozen-backbone feature cache always augments on the cpu")
    batch_size: int | Literal["auto"] = Field(64, description="training batch size, or auto: the largest power of two (up to 256) whose training step fits in the device's free memory with a margin")
    eval_batch_size: int | None = Field(None, gt=0, description="evaluation batch size; default: batch_size")
    num_workers: int | None = Field(None, ge=0, description="DataLoader worker processes; default: chosen from the cores")
    cache: Literal["auto", "none", "memory", "disk", "device"] = Field(
        "auto", description="decoded-image cache, filled as images are first read: memory, disk (a file read back "
                            "through the page cache), device (training images resident on the accelerator, cropped "
                            "there; not with augment_on cpu), none, or auto (device on CUDA when augmentation is on "
                            "the device and the images fit; else memory up to 256 MiB of decoded images, else disk)")
    on_bad_image: Literal["fail", "skip"] = Field("fail", description="what an unreadable image does: stop the run, or be left out and reported")
    limit: int | None = Field(None, gt=0, description="use at most this many images per split (quick runs)")
    options: dict[str, Any] = Field(default_factory=dict, description="settings of a dataset that declares its own options (checked against them when the recipe is read); folder takes none")
    val_split: float | None = Field(None, gt=0.0, lt=1.0, description="carve this share of train out as a seeded, stratified validation split (when the data has none)")
    sampler: Literal["random", "balanced"] = Field("random", description="training order: random (each image once per epoch) or balanced (classes drawn evenly, with replacement)")
    augment: "AugmentSpec" = Field(default_factory=lambda: AugmentSpec(), description="augmentation policy and batch mixing on top of the crop and flip")
    kfold: KFoldSpec | None = Field(None, description="train on K-1 of K stratified parts of the training data and validate on the other (`transferkit cv` runs every fold): {folds, index, group_regex, group_column}")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_file(cls, value):
        """`labels: labels.csv` is short for `labels: {file: labels.csv}`."""
        return {"file": value} if isinstance(value, str) else value

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, value):
        """A batch of no images trains nothing."""
        if value != "auto" and value <= 0:
            raise ValueError("use a positive number of images, or auto")
        return value

    @field_validator("crop_scale")
    @classmethod
    def _positive_area_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        """A crop of no area is no image: refuse 0 when the recipe is read."""
        if not 0.0 < value[0] <= value[1] <= 1.0:
            raise ValueError("use two area shares with 0 < min <= max <= 1, e.g. [0.08, 1.0]")
        return value

    @model_validator(mode="after")
    def _urls_with_webdataset(self) -> "DataSpec":
        """data.source webdataset reads data.urls, and data.urls is read only then: refuse the one without the other."""
        if self.source == "webdataset" and self.urls is None:
            raise ValueError("data.source: webdataset streams the shards data.urls names; add data.urls with "
                             "train and test (e.g. train: shards/train-{000000..000003}.tar)")
        if self.source == "files" and self.urls is not None:
            raise ValueError("data.urls: read only with data.source: webdataset; set data.source: webdataset, or "
                             "remove data.urls")
        return self

    @model_validator(mode="after")
    def _cache_fits_augmentation(self) -> "DataSpec":
        """cache: device crops on the device; augment_on: device needs the images there: refuse the contradictions."""
        if self.cache == "device" and self.augment_on == "cpu":
            raise ValueError("data.cache: device keeps training images on the accelerator to crop them there; "
                             "set data.augment_on: device or auto, or another data.cache")
        if self.augment_on == "device" and self.cache in ("memory", "disk", "none"):
            raise ValueError(f"data.augment_on: device crops training images kept on the device, but data.cache is "
                             f"{self.cache}; set data.cache: auto or device, or data.augment_on: cpu")
        if self.augment.per_image and (self.augment_on == "device" or self.cache == "device"):
            raise ValueError("data.augment: policy and random_erasing run image by image in the CPU loader, which "
                             "device-resident images skip; set data.augment_on: cpu and data.cache: auto "
                             "(mixup and cutmix work on the device)")
        return self


class OptimizerSpec(_Spec):
    """The optimizer and its base learning rate."""

    name: str = Field("sgd", description="a registered optimizer (see `transferkit list-optimizers`)")
    lr: float = Field(1e-3, gt=0.0, description="base learning rate (the backbone's under head_multiplier)")
    weight_decay: float = Field(0.0, ge=0.0, description="weight decay")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    nesterov: bool = Field(False, description="SGD Nesterov momentum")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")


class LRPolicySpec(_Spec):
    """How the base learning rate is spread over the backbone's and head's parameters."""

    name: str = Field("head_multiplier", description="a registered LR policy (see `transferkit list-lr-policies`)")
    multiplier: float = Field(10.0, gt=0.0, description="head LR = base LR x multiplier (head_multiplier, layerwise_decay)")
    decay: float = Field(0.7, gt=0.0, le=1.0, description="LR factor per depth step from head to stem (layerwise_decay)")
    feature_cache: bool = Field(True, description="frozen_backbone: compute backbone features once and train the head on them")
    cache_views: int = Field(0, ge=0, description="frozen_backbone feature cache: augmented views per training image (0: eval transform only)")
    options: dict[str, Any] = Field(default_factory=dict, description="settings of a registered LR policy that declares its own options (checked against them when the recipe is read)")


class ScheduleSpec(_Spec):
    """How the learning rate changes over training."""

    name: Literal["constant", "step", "cosine", "onecycle"] = Field("constant", description="the schedule (see `transferkit list-schedules`)")
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warm-up length in epochs (may be fractional)")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up length in optimizer updates (instead of warmup_epochs)")
    pct_start: float = Field(0.25, gt=0.0, lt=1.0, description="onecycle: share of training spent rising to the LR")
    div_factor: float = Field(25.0, ge=1.0, description="onecycle: the LR starts at LR / div_factor")
    final_div_factor: float = Field(1e4, ge=1.0, description="onecycle: the LR ends at LR / (div_factor x final_div_factor)")
    step_size: int = Field(1, gt=0, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: LR factor at each decay")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine: final LR as a share of the initial LR")


def parse_duration(text: str | int | float) -> float:
    """'90s', '10m', '1.5h' or a number of seconds -> seconds; ValueError with the accepted forms otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError("use a positive duration like 90s, 10m or 1.5h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


class TaskSpec(_Spec):
    """What the network learns to output: one class, a set of labels, or numbers (see `transferkit list-tasks`)."""

    name: str = Field("single_label", description="a registered task: single_label (one class per image), multi_label (any set of labels), regression (one or more numbers), or one a plugin adds")
    loss: Literal["auto", "cross_entropy", "bce", "mse", "l1", "huber"] = Field("auto", description="auto: the task's own (cross_entropy, bce, mse); regression also takes l1 or huber")
    huber_delta: float = Field(1.0, gt=0.0, description="huber loss: where it turns from squared to linear, in standardised target units")
    pos_weight: Literal["none", "auto"] | list[float] = Field("none", description="multi_label: weight of each label's positive examples in the loss: none, auto (negatives / positives in training), or one weight per label")
    thresholds: float | list[float] | None = Field(None, description="multi_label: decision threshold on each label's probability (one for all, or one per label); default: tuned per label for F1 on the validation split after training (0.5 without one)")
    options: dict[str, Any] = Field(default_factory=dict, description="settings of a registered task that declares its own options (checked against them when the recipe is read)")


class EarlyStoppingSpec(_Spec):
    """Stop training once the best metric (train.best_metric) has stopped improving."""

    patience: int = Field(3, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0.0, description="smallest change that counts as an improvement")
    metric: str = Field("auto", pattern=r"^(auto|(val|test)_[a-z0-9_]+)$", description="must match train.best_metric when both are set: best.pt and early stopping share one notion of best")


class EMASpec(_Spec):
    """Exponential moving average of the weights, updated after every optimizer update."""

    decay: float = Field(0.999, gt=0.0, lt=1.0, description="weight of the old average at each update")


class PluggedSpec(_Spec):
    """A registered callback or logger and its settings; a bare name is short for {name: NAME}."""

    name: str = Field(description="the registered name (see `transferkit list-callbacks` / `list-loggers`)")
    options: dict[str, Any] = Field(default_factory=dict, description="its settings, checked against the options it declares when the recipe is read")


def _plugged(items: list) -> list:
    """Bare names as PluggedSpec, so the code that reads the recipe sees one shape."""
    return [PluggedSpec(name=item) if isinstance(item, str) else item for item in items]


class TrainSpec(_Spec):
    """The training loop: length, device, precision and numerics."""

    epochs: int = Field(5, gt=0, description="training epochs")
    device: str = Field("auto", description="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    precision: Precision = Field("auto", description="auto: bf16 autocast on CUDA where supported, else fp16; fp32 elsewhere")
    channels_last: bool | Literal["auto"] = Field("auto", description="channels_last memory format; auto: for convolutional backbones where it pays")
    compile: bool = Field(False, description="torch.compile the model")
    loss_reduction: Literal["mean", "sum"] = Field("mean", description="reduce per-example losses by mean, or by sum as d2l's loop does")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross-entropy label smoothing")
    deterministic: bool = Field(False, description="deterministic algorithms and single-process loading: identical runs for one seed")
    best_metric: str = Field(
        "auto", pattern=r"^(auto|(val|test)_[a-z0-9_]+)$",
        description="metric that picks best.pt and drives early stopping: val_ or test_ and one of the task's "
                    "metrics (single_label: accuracy, loss; multi_label: map, f1, subset_accuracy, loss; "
                    "regression: mae, rmse, r2, loss); auto: the task's own on the validation split when there is "
                    "one (val_accuracy, val_map, val_mae), else no selection (best.pt is the last epoch); a test_ "
                    "metric selects on the test split, and the run says so")
    selection: Literal["auto", "within", "best", "last"] = Field("auto", description="which epoch best.pt takes, on best_metric: best (the best score), last (the last epoch), within (the latest epoch within selection_tolerance standard errors of the best score: a small validation split's noise is not chased); auto: within (docs/training.md has the measurements)")
    selection_tolerance: float = Field(1.0, ge=0.0, description="selection: within: how many standard errors of an accuracy measured on the validation split an epoch may trail the best one by and still be taken")
    checkpoint: bool = Field(True, description="save checkpoints (see keep)")
    keep: Literal["both", "last", "best"] = Field("both", description="which checkpoints to keep: last.pt (everything a resume needs), best.pt (weights and what predicting needs), or both")
    freeze_epochs: int = Field(0, ge=0, description="train only the head (backbone weights and batch-norm statistics frozen) for this many first epochs, then the whole network")
    early_stopping: "EarlyStoppingSpec | None" = Field(None, description="stop when the best metric has not improved for `patience` epochs")
    ema: "EMASpec | None" = Field(None, description="exponential moving average of the weights, evaluated beside the raw ones")
    accumulate_steps: int = Field(1, ge=1, description="batches whose gradients add up to one optimizer update (batch_size 8 x 4 steps like 32)")
    freeze_bn_stats: bool = Field(False, description="fine-tune with the backbone's batch-norm layers in eval mode: the pretrained running statistics are used and kept (their scale and shift still train); steadier for short fine-tuning, small batches and training crops smaller than the evaluation size")
    clip_grad_norm: float | None = Field(None, gt=0.0, description="clip the gradients' global L2 norm to this before each update")
    class_weights: Literal["none", "auto"] | list[float] = Field("none", description="per-class loss weights: none, auto (inverse class frequency ^ class_weight_power), or one weight per class")
    class_weight_power: float = Field(1.0, ge=0.0, description="auto class weights: (1 / frequency) ^ power (0.5 softens them)")
    callbacks: list[str | PluggedSpec] = Field(default_factory=list, description="registered callbacks (`transferkit list-callbacks`: a plugin's), each a name or {name, options}; they run after the built-in features, before the loggers and the checkpoint (docs/callbacks.md)")
    loggers: list[str | PluggedSpec] = Field(default_factory=lambda: ["csv"], validate_default=True, description="registered loggers (`transferkit list-loggers`), each a name or {name, options}: csv (metrics.csv/json), tensorboard (event files under tensorboard/), mlflow, wandb (docs/callbacks.md), or a plugin's")
    probe_epochs: int = Field(0, ge=0, description="before training, fit the new head alone for this many epochs on cached backbone features (linear probe, then fine-tune)")
    probe_lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate of the probe_epochs head fit")
    tta_flip: bool = Field(False, description="evaluate the test split on each image and its mirror image, averaging the logits (test-time augmentation); the validation split only with tta_on_val")
    tta_on_val: bool = Field(False, description="with tta_flip: flip during selection too (the validation split each epoch), at twice its cost")
    eval_test: Literal["every_epoch", "end"] = Field("every_epoch", description="when the test split is evaluated: every_epoch (a test column per epoch), or end: once, the weights best.pt holds, after training (presets' default; selection never sees it)")
    calibrate: bool = Field(False, description="after training, fit a temperature on the validation split so the probabilities are calibrated (single_label; presets' default); it travels in best.pt and every export")
    sync_batchnorm: bool = Field(False, description="under torchrun with several processes: batch norm statistics over the whole global batch (SyncBatchNorm) instead of each process's share")
    budget: str | None = Field(None, description="wall-time budget, e.g. 90s, 10m, 1.5h: after the first epoch the number of epochs (and the LR schedule) is fitted so the run ends inside it")
    init_from: str | None = Field(None, description="a transferkit checkpoint (best.pt or last.pt of a run with the same backbone, head and classes) whose weights, head included, the model starts from instead of the backbone's pretrained ones; a fresh optimizer and schedule (`transferkit continue` sets it)")

    @field_validator("callbacks", "loggers")
    @classmethod
    def _one_shape(cls, items: list, info) -> list:
        """Bare names become {name: NAME}; a logger named twice would log everything twice: refused."""
        items = _plugged(items)
        names = [item.name for item in items]
        twice = next((n for n in names if names.count(n) > 1), None)
        if info.field_name == "loggers" and twice:
            raise ValueError(f"logger {twice} is listed twice; keep one")
        return items

    @field_serializer("callbacks", "loggers")
    def _short(self, items: list) -> list:
        """Written back as bare names where no options are set (`loggers: [csv]`)."""
        return [item.name if not item.options else {"name": item.name, "options": item.options} for item in items]

    @field_validator("budget")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        """Refuse a budget that is not a duration when the recipe is read."""
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("device")
    @classmethod
    def _known_device_kind(cls, value: str) -> str:
        """Refuse names torch cannot mean here (tpu, gpu, cuda0) when the recipe is read, not mid-run."""
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("use auto, cpu, cuda, cuda:N or mps")
        return value


class SearchParam(_Spec):
    """One key of the search space: a range of numbers `{low, high, log, step}`, or a list of choices."""

    low: float | None = Field(None, description="smallest value tried (a key that takes a number; integers for an integer key)")
    high: float | None = Field(None, description="largest value tried")
    log: bool = Field(False, description="sample on a log scale (needs low > 0): for learning rates and weight decay")
    step: float | None = Field(None, gt=0.0, description="try only low, low + step, ... (default: any value; 1 for an integer key)")
    choices: list[Any] | None = Field(None, min_length=1, description="the values tried, written as a plain list: `train.label_smoothing: [0.0, 0.1]`")

    @model_validator(mode="before")
    @classmethod
    def _list_is_choices(cls, value):
        """`key: [a, b]` is short for `key: {choices: [a, b]}`."""
        return {"choices": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _range_or_choices(self) -> "SearchParam":
        """A range needs low <= high (and low > 0 on a log scale); choices take no range settings."""
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("give a list of choices or a range {low, high}, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give a range {low: ..., high: ...} or a list of choices [a, b]")
        if self.low > self.high:
            raise ValueError(f"low {self.low:g} is above high {self.high:g}; swap them")
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0 (got {self.low:g}); raise low or set log: false")
        if self.log and self.step is not None:
            raise ValueError("Optuna samples a log range without a step; remove step or log")
        return self

    @model_serializer
    def _short(self):
        """Written back as the recipe writes it: a list of choices, or the range's keys that are set."""
        if self.choices is not None:
            return list(self.choices)
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {}),
                **({"step": self.step} if self.step is not None else {})}


def _choices_too(schema: dict) -> None:
    """JSON Schema of tune.space: each key a range, or the plain list of choices the recipe may write instead."""
    choices = {"type": "array", "minItems": 1, "items": {"type": ["string", "number", "boolean", "null"]}}
    schema["additionalProperties"] = {"anyOf": [schema["additionalProperties"], choices]}


class TuneSpec(_Spec):
    """The hyperparameter search of `transferkit tune` (docs/tuning.md): the space, the objective and the pruner."""

    metric: str = Field("auto", description="the validation metric the search optimises (val_accuracy, val_loss, val_map, ...; never a test metric); auto: train.best_metric when it is a val_ metric, else the task's own on the validation split")
    space: dict[str, SearchParam] = Field(default_factory=dict, description="dotted recipe key -> {low, high, log, step} or a list of choices, e.g. `optimizer.lr: {low: 1.0e-4, high: 1.0e-1, log: true}`, `train.label_smoothing: [0.0, 0.1]`", json_schema_extra=_choices_too)
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = Field("median", description="Optuna's pruner, judging each trial after every epoch on the metric")
    pruner_startup_trials: int = Field(5, ge=0, description="median: trials that run to the end before the pruner compares others with them")
    pruner_warmup_epochs: int = Field(0, ge=0, description="median: epochs every trial trains before it may be pruned")
    sampler_startup_trials: int = Field(10, ge=0, description="random trials before Optuna's TPE sampler models the results")

    @field_validator("metric")
    @classmethod
    def _validation_metric(cls, value: str) -> str:
        """The search selects on it: a test metric would make the test split's numbers optimistic."""
        if value.startswith("test_"):
            raise ValueError(f"the search must not select on the test split (its metrics would then be optimistic); "
                             f"use val_{value.removeprefix('test_')} (or auto)")
        if not re.fullmatch(r"auto|val_[a-z0-9_]+", value):
            raise ValueError("use auto or a validation metric: val_ and one of the task's metrics (val_accuracy, "
                             "val_loss, ...)")
        return value


class ExperimentSpec(_Spec):
    """One experiment: a base run and optional variants, compared in one table."""

    name: str = Field("experiment", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="experiment name; runs go to <output_dir>/<name>/<variant>")
    description: str = Field("", description="free text shown in reports")
    preset: Literal["fast", "balanced", "best"] | None = Field(None, description="start from a preset's settings (docs/presets.md); the recipe's own keys win")
    seed: int = Field(0, description="random seed for initialisation, data order and augmentation")
    base_variant: str = Field("base", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="name of the run the recipe itself describes")
    output_dir: str = Field("runs", description="root of run directories")
    task: TaskSpec = Field(default_factory=TaskSpec, description="what the network learns: single_label (default), multi_label or regression; a name, or {name, loss, ...}")
    backbone: BackboneSpec = Field(default_factory=BackboneSpec, description="feature extractor")
    head: HeadSpec = Field(default_factory=HeadSpec, description="new classifier")
    data: DataSpec = Field(default_factory=DataSpec, description="data set and transforms")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="optimizer")
    lr_policy: LRPolicySpec = Field(default_factory=LRPolicySpec, description="learning rate per parameter group")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="learning rate over time")
    train: TrainSpec = Field(default_factory=TrainSpec, description="training loop")
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict, description="name -> partial recipe overriding the base, run after it")
    tune: TuneSpec | None = Field(None, description="the search space of `transferkit tune` (docs/tuning.md); `transferkit run` ignores it")

    @field_validator("task", mode="before")
    @classmethod
    def _task_name(cls, value):
        """`task: multi_label` is short for `task: {name: multi_label}`."""
        return {"name": value} if isinstance(value, str) else value


# Names that lived here before loading moved out of the schema, kept importable for existing code.
_MOVED = {"load_recipe": "load:parse_recipe", "validate": "load:validate", "read_yaml": "yaml_io:read_yaml",
          "dump_yaml": "yaml_io:dump_yaml", "UniqueKeyLoader": "yaml_io:UniqueKeyLoader",
          "apply_overrides": "overrides:apply_overrides", "parse_override": "overrides:parse_override",
          "variant_of": "variants:variant_of", "variant_names": "variants:variant_names",
          "deep_merge": "merge:deep_merge", "yaml_line_of": "messages:yaml_line_of"}


def __getattr__(name: str):
    """`from transferkit.recipe.spec import load_recipe` (and the other moved names) still works."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module, _, attr = _MOVED[name].partition(":")
    return getattr(importlib.import_module(f"transferkit.recipe.{module}"), attr)


__all__ = ["ExperimentSpec", "TaskSpec", "LabelTableSpec", "ShardUrlsSpec", "KFoldSpec", "BackboneSpec", "HeadSpec", "DataSpec",
           "AugmentSpec", "OptimizerSpec", "LRPolicySpec", "ScheduleSpec", "EarlyStoppingSpec", "EMASpec", "TrainSpec",
           "PluggedSpec", "SearchParam", "TuneSpec", "parse_duration"]
