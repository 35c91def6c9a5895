"""The metadata an exported model carries: class names, preprocessing and recipe, as JSON strings."""

from __future__ import annotations

import json

EXPORT_FORMAT = "transferkit-export-1"
FORMAT_KEY = "transferkit.format"


def export_metadata(classes: list[str], preprocessing: dict, recipe: dict, task: dict | None = None) -> dict[str, str]:
    """String-to-string metadata (what ONNX metadata_props and TorchScript extra files hold); `task` is its name
    and state (multi_label thresholds, regression target scale)."""
    return {FORMAT_KEY: EXPORT_FORMAT, "transferkit.classes": json.dumps(list(classes)),
            "transferkit.preprocessing": json.dumps(preprocessing), "transferkit.recipe": json.dumps(recipe),
            "transferkit.task": json.dumps(task or {"name": "single_label", "state": {}}),
            "transferkit.input": "images: float32 (N, 3, S, S) RGB values 0-255, S = preprocessing.input_size; "
                                 "output logits: (N, len(classes)); multi_label: sigmoid, then the task's thresholds; "
                                 "regression: x std + mean of the task's state"}
