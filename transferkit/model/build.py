"""build_model: backbone with its weights, a new head and the input normalisation, as one TransferModel."""

from __future__ import annotations

from dataclasses import dataclass

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
