"""The metadata an exported model carries: class names, preprocessing and recipe, as JSON strings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transferkit.model.checkpoint_format import CheckpointError
from transferkit.model.preprocess import Preprocessing
from transferkit.recipe.spec import ExperimentSpec
from transferkit.tasks import Task, build_task

EXPORT_FORMAT = "transferkit-export-1"
FORMAT_KEY = "transferkit.format"
TORCHSCRIPT_METADATA = "transferkit.json"  # the TorchScript archive's extra file holding the metadata as JSON


def export_metadata(classes: list[str], preprocessing: dict, recipe: dict, task: dict | None = None,
                    export_format: str = "onnx") -> dict[str, str]:
    """String-to-string metadata (what ONNX metadata_props, TorchScript extra files and OpenVINO rt_info hold);
    `task` is its name and state (single_label temperature, multi_label thresholds, regression
    target scale), `export_format` the format
    `transferkit export` wrote (onnx, onnx-fp16, onnx-int8, openvino, torchscript)."""
    return {FORMAT_KEY: EXPORT_FORMAT, "transferkit.export_format": export_format,
            "transferkit.classes": json.dumps(list(classes)),
            "transferkit.preprocessing": json.dumps(preprocessing), "transferkit.recipe": json.dumps(recipe),
            "transferkit.task": json.dumps(task or {"name": "single_label", "state": {}}),
            "transferkit.input": "images: float32 (N, 3, S, S) RGB values 0-255, S = preprocessing.input_size; "
                                 "output logits: (N, len(classes)); single_label: softmax(logits / the task state's "
                                 "temperature); multi_label: sigmoid, then the task's thresholds; "
                                 "regression: x std + mean of the task's state"}


@dataclass
class ExportedModel:
    """What an export's metadata says: class names, preprocessing, recipe, the task built from them, the format."""

    classes: list[str]
    preprocessing: Preprocessing
    recipe: dict
    task: Task
    format: str


def read_export_metadata(meta: dict[str, str], source: Path, kind: str) -> ExportedModel:
    """The metadata of an export (ONNX metadata_props, the TorchScript extra file or OpenVINO rt_info);
    CheckpointError when the file was not exported by transferkit."""
    if meta.get(FORMAT_KEY) != EXPORT_FORMAT:
        raise CheckpointError(f"{source}: a {kind} model not exported by transferkit (no {FORMAT_KEY} "
                              f"metadata); export it with `transferkit export RUN_DIR --format {kind.lower()}`")
    fmt = meta.get("transferkit.export_format", kind.lower())  # exports from before int8: onnx or torchscript
    classes = json.loads(meta["transferkit.classes"])
    recipe = json.loads(meta["transferkit.recipe"])
    task = json.loads(meta.get("transferkit.task", "{}"))  # exports from before tasks: single_label
    return ExportedModel(classes, Preprocessing.from_dict(json.loads(meta["transferkit.preprocessing"])), recipe,
                         build_task(ExperimentSpec.model_validate(recipe), classes, task.get("state")), fmt)
