"""Presets: named sets of recipe settings (`preset: fast | balanced | best`), merged under the recipe's own keys.

These are the settings that do not depend on the data; run/preset_rules.py adds the rules that do (the
backbone when none is named, the folder's validation split, the training crop size on a CPU, the epochs from
the number of training images, the EMA decay), for `transferkit fit` and for a recipe's `preset:` alike.
docs/presets.md explains each choice.
"""

from __future__ import annotations

from transferkit.recipe.merge import deep_merge

PRESETS: dict[str, dict] = {
    "fast": {  # a linear probe on cached features: one forward pass over the images, then seconds per epoch
        "lr_policy": {"name": "frozen_backbone", "feature_cache": True},
        "optimizer": {"name": "adamw", "lr": 1.0e-3, "weight_decay": 1.0e-4},
        "schedule": {"name": "cosine"},
        "data": {"batch_size": 64},
        "train": {"eval_test": "end", "calibrate": True},
    },
    "balanced": {  # linear probe on cached features, then the whole network fine-tuned from there (LP-FT)
        "lr_policy": {"name": "uniform"},
        "optimizer": {"name": "sgd", "lr": 2.0e-3, "momentum": 0.9, "weight_decay": 1.0e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0.1},
        "data": {"batch_size": 32, "crop_scale": [0.35, 1.0]},
        "train": {"probe_epochs": 20, "probe_lr": 1.0e-3, "label_smoothing": 0.1,
                  "freeze_bn_stats": True, "eval_test": "end", "calibrate": True},
    },
    "best": {  # LP-FT, longer, with stronger augmentation, EMA of the weights and test-time flip
        "lr_policy": {"name": "uniform"},
        "optimizer": {"name": "sgd", "lr": 2.0e-3, "momentum": 0.9, "weight_decay": 1.0e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0.1},
        "data": {"batch_size": 32, "crop_scale": [0.35, 1.0], "augment": {"policy": "trivialaugment"}},
        "train": {"probe_epochs": 20, "probe_lr": 1.0e-3, "label_smoothing": 0.1,
                  "freeze_bn_stats": True, "ema": {}, "tta_flip": True, "eval_test": "end",
                  "calibrate": True},
    },
}


def with_preset(raw: dict) -> dict:
    """`raw` with its `preset`'s settings filled in under the keys it sets itself; unchanged without one."""
    name = raw.get("preset")
    if name not in PRESETS:
        return raw  # no preset, or an unknown one the schema then refuses with the valid names
    preset = PRESETS[name]
    task = raw.get("task")
    task = task.get("name") if isinstance(task, dict) else task
    if task not in (None, "single_label"):  # label smoothing spreads a class's probability, and a temperature scales
        # a softmax: one class per image only
        preset = {**preset, "train": {k: v for k, v in preset.get("train", {}).items()
                                      if k not in ("label_smoothing", "calibrate")}}
    return deep_merge(preset, raw)
