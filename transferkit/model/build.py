"""build_model: backbone with its weights, a new head and the input normalisation, as one TransferModel."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from transferkit.errors import SpecError
from transferkit.model.backbones import build_backbone
from transferkit.model.heads import build_head
from transferkit.model.preprocess import Preprocessing
from transferkit.model.transfer import TransferModel
from transferkit.recipe.spec import ExperimentSpec


@dataclass
class BuiltModel:
    """The model, the preprocessing its inputs need, and where its backbone weights came from."""

    model: TransferModel
    preprocessing: Preprocessing
    weights_origin: str
    parent: dict | None = None  # train.init_from: the checkpoint the weights came from, its run and epoch


def build_model(spec: ExperimentSpec, num_classes: int, pretrained: bool | None = None) -> BuiltModel:
    """The recipe's model for `num_classes` classes; `pretrained=False` skips every weight load (a checkpoint
    will fill the weights). No data splits, seeding or run files are touched."""
    backbone_spec = spec.backbone
    if pretrained is False and backbone_spec.pretrained:
        backbone_spec = backbone_spec.model_copy(update={"pretrained": False, "weights": None})
    backbone = build_backbone(backbone_spec)
    d = spec.data
    prep = backbone.preprocessing.with_overrides(d.image_size, d.resize_size, d.mean, d.std, d.interpolation,
                                                      d.train_image_size)
    if prep.train_size and not backbone.is_convolutional:
        raise SpecError(f"data.train_image_size: {spec.backbone.name} takes one input size (not a convolutional "
                        f"network); remove data.train_image_size or set it to {prep.input_size}")
    head = build_head(spec.head, backbone.num_features, num_classes)
    model = TransferModel(backbone.module, head, prep.mean, prep.std, convolutional=backbone.is_convolutional)
    return BuiltModel(model, prep, backbone.weights)


NORMALISATION = ("input_scale", "input_shift")  # the model's input buffers: from the recipe, not the checkpoint


def build_from_checkpoint(spec: ExperimentSpec, classes: list[str]) -> BuiltModel:
    """The recipe's model with every weight, head included, from train.init_from (a transferkit checkpoint of the
    same backbone, head and classes); the backbone's own pretrained weights are not loaded (nothing downloads)."""
    from transferkit.model.checkpoint_format import PREDICT_KEYS, load_checkpoint

    path = Path(spec.train.init_from).expanduser()
    saved = load_checkpoint(path, PREDICT_KEYS)
    if [str(c) for c in saved["classes"]] != list(classes):
        raise SpecError(f"train.init_from: {path} was trained on the classes {', '.join(map(str, saved['classes']))}; "
                        f"the data has {', '.join(classes)}; continue on the data it was trained on, or start from "
                        f"backbone.weights: {path} (the backbone alone)")
    built = build_model(spec, len(classes), pretrained=False)
    result = built.model.load_state_dict({k: v for k, v in saved["model"].items() if k not in NORMALISATION},
                                         strict=False)
    wrong = [k for k in result.missing_keys if k not in NORMALISATION] + list(result.unexpected_keys)
    if wrong:
        recipe = saved["recipe"]
        raise SpecError(f"train.init_from: {path} holds another network (it lacks or adds {', '.join(wrong[:3])}"
                        f"{', ...' if len(wrong) > 3 else ''}); it was trained with backbone "
                        f"{recipe.get('backbone', {}).get('name')} and head {recipe.get('head', {}).get('name')}: "
                        f"use those")
    d = spec.data
    prep = replace(Preprocessing.from_dict(saved["preprocessing"]), train_size=None).with_overrides(
        d.image_size, d.resize_size, d.mean, d.std, d.interpolation, d.train_image_size)
    model = TransferModel(built.model.backbone, built.model.head, prep.mean, prep.std,
                          convolutional=built.model.is_convolutional)
    epoch = saved.get("epoch")
    parent = {"checkpoint": str(path.resolve()), "run_dir": str(path.resolve().parent), "epoch": epoch}
    return BuiltModel(model, prep, f"{path}{f', epoch {epoch}' if epoch else ''}", parent)
