"""Train and eval transforms producing uint8 CHW tensors; normalisation happens in the model, on the device."""

from __future__ import annotations

from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from transferkit.model.preprocess import Preprocessing
from transferkit.recipe.spec import DataSpec


def interpolation_mode(name: str) -> InterpolationMode:
    """torchvision's InterpolationMode for 'bilinear', 'bicubic' or 'nearest'."""
    return InterpolationMode(name)


def train_transform(prep: Preprocessing, spec: DataSpec) -> v2.Compose:
    """RandomResizedCrop(size) + optional horizontal flip, as d2l's seed; output uint8 CHW."""
    steps = [v2.RandomResizedCrop(prep.input_size, scale=spec.crop_scale, ratio=spec.crop_ratio,
                                  interpolation=interpolation_mode(prep.interpolation), antialias=True)]
    if spec.hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.PILToTensor())
    return v2.Compose(steps)


def eval_transform(prep: Preprocessing) -> v2.Compose:
    """Resize the shorter side to resize_size, centre-crop input_size; output uint8 CHW."""
    return v2.Compose([
        v2.Resize(prep.resize_size, interpolation=interpolation_mode(prep.interpolation), antialias=True),
        v2.CenterCrop(prep.input_size),
        v2.PILToTensor(),
    ])

