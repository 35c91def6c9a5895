"""Images to model-ready uint8 batches, decoded in background threads while the model computes."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from transferkit.data.images import FIXES, EncodedImage, ImageReadError, open_rgb, to_rgb
from transferkit.data.loading import available_cores
from transferkit.data.transforms import eval_transform, interpolation_mode
from transferkit.errors import DataError
from transferkit.model.preprocess import Preprocessing


@dataclass
class ImageBatch:
    """Positions (in the input order) and uint8 (N, 3, S, S) images of the readable inputs; errors by position."""

    positions: list[int]
    images: torch.Tensor
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Inputs this batch accounts for, readable or not."""
        return len(self.positions) + len(self.errors)


def read_error(exc: Exception) -> str:
    """The one-line reason an input could not be read, and its fix, without the training-only advice."""
    if isinstance(exc, ImageReadError):
        return f"{exc.reason}; {FIXES[exc.kind]}" if exc.kind == "too-large" else exc.reason
    return " ".join(str(exc).split()) or type(exc).__name__


class ImagePreparer:
    """Turns a path, a PIL image or a 0-255 tensor into the (3, S, S) uint8 tensor the model takes, as evaluation does."""

    def __init__(self, prep: Preprocessing):
        self.prep = prep
        self.pil_transform = eval_transform(prep)
        self.tensor_transform = v2.Compose([
            v2.Resize(prep.resize_size, interpolation=interpolation_mode(prep.interpolation), antialias=True),
            v2.CenterCrop(prep.input_size)])

    def __call__(self, item) -> torch.Tensor:
        """The model input for one item; raises DataError (or ImageReadError) when it cannot be read."""
        if isinstance(item, (str, Path)):
            return self.pil_transform(open_rgb(item, min_side=self.prep.resize_size))
        if isinstance(item, EncodedImage):
            return self.pil_transform(item.decode(min_side=self.prep.resize_size))
        if isinstance(item, Image.Image):
            image = ImageOps.exif_transpose(item)
            return self.pil_transform(to_rgb(image, Path(getattr(item, "filename", "") or "<PIL image>")))
        if isinstance(item, torch.Tensor):
            return self._from_tensor(item)
        raise DataError(f"cannot predict a {type(item).__name__}; give a path, a PIL image or a (3, H, W) tensor")

    def from_bytes(self, name: str, data: bytes) -> torch.Tensor:
        """The model input for an image file's bytes (an upload), decoded as the file itself would be."""
        return self.pil_transform(open_rgb(name, data, min_side=self.prep.resize_size))

    def _from_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() != 3 or tensor.shape[0] != 3:
            raise DataError(f"image tensor of shape {tuple(tensor.shape)}: expected (3, H, W) RGB with values 0-255")
        size = self.prep.input_size
        if tensor.shape[1:] != (size, size):
            tensor = self.tensor_transform(tensor.float() if not tensor.is_floating_point() else tensor)
        return tensor.round().clamp(0, 255).to(torch.uint8) if tensor.is_floating_point() else tensor.to(torch.uint8)


def expand_items(items: Iterable) -> list:
    """Flatten (N, 3, H, W) tensors into single images; everything else passes through."""
    flat: list = []
    for item in items:
        if isinstance(item, torch.Tensor) and item.dim() == 4:
            flat.extend(item.unbind(0))
        else:
            flat.append(item)
    return flat


def default_decode_threads(device: torch.device) -> int:
    """Decoding threads: one on a CPU (the model needs the cores), most cores when a GPU computes."""
    cores = available_cores()
    return max(1, min(8, cores - 1)) if device.type != "cpu" else 1


def read_batches(items: list, prepare: Callable[[object], torch.Tensor], batch_size: int,
                 threads: int = 1) -> Iterator[ImageBatch]:
    """Batches of prepared images in input order; decoding runs `threads` ahead of the consumer.

    An item that cannot be read becomes an error at its position instead of stopping the rest.
    """
    def one(item):
        try:
            return prepare(item), None
        except (DataError, OSError, ValueError) as exc:
            return None, read_error(exc)

    window = max(2 * batch_size, 4 * threads)  # bounded read-ahead: memory stays a few batches
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="transferkit-decode") as pool:
        pending: deque = deque()
        next_item = 0
        batch_start = 0
        while batch_start < len(items):
            while next_item < len(items) and len(pending) < window:
                pending.append(pool.submit(one, items[next_item]))
                next_item += 1
            end = min(batch_start + batch_size, len(items))
            positions, images, errors = [], [], {}
            for position in range(batch_start, end):
                image, error = pending.popleft().result()
                if error is None:
                    positions.append(position)
                    images.append(image)
                else:
                    errors[position] = error
                if next_item < len(items):
                    pending.append(pool.submit(one, items[next_item]))
                    next_item += 1
            stacked = torch.stack(images) if images else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
            yield ImageBatch(positions, stacked, errors)
            batch_start = end
