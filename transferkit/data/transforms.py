"""Train and eval transforms producing uint8 CHW tensors; normalisation happens in the model, on the device."""

from __future__ import annotations

from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from transferkit.model.preprocess import Preprocessing
from transferkit.recipe.spec import DataSpec


def interpolation_mode(name: str) -> InterpolationMode:
    """torchvision's InterpolationMode for 'bilinear', 'bicubic' or 'nearest'."""
    return InterpolationMode(name)


POLICIES = {"trivialaugment": v2.TrivialAugmentWide, "randaugment": v2.RandAugment, "autoaugment": v2.AutoAugment}


def train_transform(prep: Preprocessing, spec: DataSpec) -> v2.Compose:
    """RandomResizedCrop(training size) + optional horizontal flip, as d2l's seed, then data.augment's policy and random
    erasing; output uint8 CHW."""
    steps = [v2.RandomResizedCrop(prep.train_input_size, scale=spec.crop_scale, ratio=spec.crop_ratio,
                                  interpolation=interpolation_mode(prep.interpolation), antialias=True)]
    if spec.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if spec.augment.policy != "none":
        # The policies' geometric ops take nearest or bilinear on tensors (cached images are tensors), not bicubic.
        steps.append(POLICIES[spec.augment.policy](interpolation=InterpolationMode.BILINEAR))
    steps.append(v2.PILToTensor())
    if spec.augment.random_erasing > 0:
        steps.append(v2.RandomErasing(p=spec.augment.random_erasing, value=0))
    return v2.Compose(steps)


def batch_mixer(spec: DataSpec, num_classes: int):
    """MixUp and/or CutMix as one batch op (images, labels) -> (mixed images, soft targets); None when off."""
    ops = []
    if spec.augment.mixup > 0:
        ops.append(v2.MixUp(alpha=spec.augment.mixup, num_classes=num_classes))
    if spec.augment.cutmix > 0:
        ops.append(v2.CutMix(alpha=spec.augment.cutmix, num_classes=num_classes))
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


def eval_transform(prep: Preprocessing) -> v2.Compose:
    """Resize the shorter side to resize_size, centre-crop input_size; output uint8 CHW."""
    return v2.Compose([
        v2.Resize(prep.resize_size, interpolation=interpolation_mode(prep.interpolation), antialias=True),
        v2.CenterCrop(prep.input_size),
        v2.PILToTensor(),
    ])

