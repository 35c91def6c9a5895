"""What a backbone's weights expect of an image: size, resize, interpolation, mean and std."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Input size, eval resize, interpolation and normalisation that travel with a set of weights."""

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    train_size: int | None = None  # training crop when smaller or larger than input_size; None: input_size

    @property
    def train_input_size(self) -> int:
        """Side of the training crops: `train_size` when set, else the evaluation crop's."""
        return self.train_size or self.input_size

    @property
    def crop_pct(self) -> float:
        """Share of the resized image the centre crop keeps (224/256 for the classic recipe)."""
        return self.input_size / self.resize_size

    def with_overrides(self, image_size: int | None = None, resize_size: int | None = None,
                       mean=None, std=None, interpolation: str | None = None,
                       train_image_size: int | None = None) -> "Preprocessing":
        """A copy with the recipe's settings applied; a new size keeps the resize/crop ratio."""
        result = self
        if image_size is not None:
            result = replace(result, input_size=image_size,
                             resize_size=max(image_size, round(image_size / self.crop_pct)))
        if resize_size is not None:
            result = replace(result, resize_size=resize_size)
        if mean is not None:
            result = replace(result, mean=tuple(mean))
        if std is not None:
            result = replace(result, std=tuple(std))
        if interpolation is not None:
            result = replace(result, interpolation=interpolation)
        if train_image_size is not None:
            result = replace(result, train_size=None if train_image_size == result.input_size else train_image_size)
        return result

    def to_dict(self) -> dict:
        """Plain types, for checkpoints and YAML."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """Inverse of to_dict."""
        return cls(input_size=int(d["input_size"]), resize_size=int(d["resize_size"]),
                   mean=tuple(d["mean"]), std=tuple(d["std"]), interpolation=str(d["interpolation"]),
                   train_size=int(d["train_size"]) if d.get("train_size") else None)
