"""Training augmentation split between the loader workers and the device, for fast accelerators.

On a GPU the per-sample RandomResizedCrop resize in the CPU workers is the bottleneck. With
`data.augment_on: device` the workers only draw the random parameters and copy pixels:

* worker, per sample (`CanvasCrop`): the image with its shorter side at the eval resize (what the
  decoded-image cache stores) is pasted at the top-left of a fixed square uint8 canvas of side
  `canvas_side(resize_size)` = ceil(resize_size * 4/3), zeros elsewhere, so samples of any orientation
  stack. A long side longer than the canvas (aspect beyond 4:3 either way) is centre-cropped to it
  first: such images are augmented from their central 4:3 part. The RandomResizedCrop box is drawn on
  that (possibly centre-cropped) image by torchvision's own `v2.RandomResizedCrop.make_params`, then the
  flip coin as `v2.RandomHorizontalFlip` tosses it, from the sample's seeded RNG: for images within 4:3
  the random stream and the boxes are those `train_transform` draws for the same seed. The row and
  column after the image repeat its last row and column, so bilinear sampling at the image's bottom and
  right edges clamps to the edge as a resize does instead of blending in the zero padding.
* collate (`stack_crops`): canvases (N, 3, S, S) uint8 (channels-last strides: no transposition on the
  CPU), boxes (N, 4) float (x1, y1, x2, y2 in canvas pixels), flips (N,) bool.
* device (`crop_on_device`): `roi_align` resamples every box to size x size in one batched call, then
  the flagged rows are flipped. `aligned=True` with integer boxes maps output pixel centres exactly onto
  input pixel centres; `sampling_ratio=0` takes ceil(box/size) samples per output pixel and axis: one
  sample at scale 1 (a crop of the output size is reproduced exactly), and an average over the box
  when shrinking, an approximation of the antialiased resize. The result is float 0-255, which the
  model's normalisation takes as it takes uint8.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

MAX_ASPECT = 4.0 / 3.0  # canvas long side = resize_size x this; longer sides are centre-cropped to it


class DeviceCrop(NamedTuple):
    """One training sample for device augmentation: (3, S, S) uint8 canvas, float box (x1, y1, x2, y2), flip."""

    canvas: torch.Tensor
    box: torch.Tensor
    flip: bool


def augments_on_device(setting: Literal["auto", "cpu", "device"], device: torch.device) -> bool:
    """data.augment_on resolved: auto means on the device on CUDA, on the CPU workers elsewhere."""
    if setting == "auto":
        return device.type == "cuda"
    return setting == "device"


def canvas_side(resize_size: int) -> int:
    """Side of the square canvas: room for any image of shorter side resize_size and aspect up to 4:3."""
    return math.ceil(resize_size * MAX_ASPECT - 1e-6)


def _hwc(image, resize_size: int, interpolation: str) -> torch.Tensor:
    """The image as an (H, W, 3) uint8 tensor with its shorter side at resize_size (resized only if needed)."""
    mode = InterpolationMode(interpolation)
    if isinstance(image, Image.Image):
        if min(image.size) != resize_size:
            image = F.resize(image, resize_size, interpolation=mode, antialias=True)
        return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8))
    if min(image.shape[-2:]) != resize_size:
        image = F.resize(image, resize_size, interpolation=mode, antialias=True)
    return image.permute(1, 2, 0)  # a view; contiguous for the cache's channels-last tensors


def fit_to_canvas(hwc: torch.Tensor, side: int) -> torch.Tensor:
    """An (H, W, 3) image with any side longer than the canvas centre-cropped to it (a view)."""
    h, w = hwc.shape[0], hwc.shape[1]
    if h > side:
        hwc = hwc[(h - side) // 2: (h - side) // 2 + side]
    if w > side:
        hwc = hwc[:, (w - side) // 2: (w - side) // 2 + side]
    return hwc


def paste_on_canvas(hwc: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
    """`hwc` (fitted) at the top-left of the (S, S, 3) zeroed `canvas`, its last row and column repeated once beyond it."""
    h, w, side = hwc.shape[0], hwc.shape[1], canvas.shape[0]
    canvas[:h, :w] = hwc
    if h < side:
        canvas[h, :w] = hwc[h - 1]
    if w < side:
        canvas[:h + (h < side), w] = canvas[:h + (h < side), w - 1]
    return canvas


class CanvasCrop:
    """Worker-side half of device augmentation: image -> DeviceCrop (see the module docstring)."""

    def __init__(self, resize_size: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool,
                 interpolation: str = "bilinear"):
        self.resize_size, self.hflip, self.interpolation = resize_size, hflip, interpolation
        self.side = canvas_side(resize_size)
        self.crop = v2.RandomResizedCrop(1, scale=scale, ratio=ratio)  # only its make_params is used

    def __call__(self, image) -> DeviceCrop:
        hwc = fit_to_canvas(_hwc(image, self.resize_size, self.interpolation), self.side)
        params = self.crop.make_params([hwc.permute(2, 0, 1)])
        flip = bool(torch.rand(1) < 0.5) if self.hflip else False
        canvas = paste_on_canvas(hwc, torch.zeros(self.side, self.side, 3, dtype=torch.uint8))
        top, left = params["top"], params["left"]
        box = torch.tensor([left, top, left + params["width"], top + params["height"]], dtype=torch.float32)
        return DeviceCrop(canvas.permute(2, 0, 1), box, flip)


def canvas_crop(prep, spec) -> CanvasCrop:
    """The worker transform for a recipe's preprocessing (Preprocessing) and data spec (DataSpec)."""
    return CanvasCrop(prep.resize_size, spec.crop_scale, spec.crop_ratio, spec.hflip, prep.interpolation)


def stack_crops(crops: list[DeviceCrop]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) uint8 canvases (channels-last strides, one memcpy per canvas), (N, 4) boxes, (N,) flips."""
    images = torch.stack([c.canvas.permute(1, 2, 0) for c in crops]).permute(0, 3, 1, 2)
    boxes = torch.stack([c.box for c in crops])
    flips = torch.tensor([bool(c.flip) for c in crops], dtype=torch.bool)
    return images, boxes, flips


def crop_on_device(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int,
                   channels_last: bool = False) -> torch.Tensor:
    """Canvases, boxes and flips (on one device) -> (N, 3, size, size) float 0-255 crops, flipped where asked."""
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=torch.float32)[:, None],
                      boxes.float()], dim=1)
    out = roi_align(images.contiguous().float(), rois, output_size=(size, size), spatial_scale=1.0,
                    sampling_ratio=0, aligned=True)
    out = torch.where(flips.view(-1, 1, 1, 1), out.flip(-1), out)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out
