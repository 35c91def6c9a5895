"""Training crops and flips computed on the device, for batches of images resident there (device_bank.py).

Layout: each training image (shorter side at most the training cache size, aspect up to 4:3 kept whole)
is pasted at the top-left of a fixed square uint8 canvas of side `canvas_side(shorter side)`, zeros
elsewhere, so images of any orientation stack into one tensor. A long side longer than the canvas
(aspect beyond 4:3 either way) is centre-cropped to it first: such images are augmented from their
central 4:3 part. The row and column after the image repeat its last row and column, so bilinear
sampling at the image's bottom and right edges clamps to the edge as a resize does instead of
blending in the zero padding.

`crop_on_device` resamples every RandomResizedCrop box to size x size in one batched `roi_align` call,
then flips the flagged rows. `aligned=True` with integer boxes maps output pixel centres exactly onto
input pixel centres; `sampling_ratio=0` takes ceil(box/size) samples per output pixel and axis: one
sample at scale 1 (a crop of the output size is reproduced exactly), and an average over the box when
shrinking, an approximation of the antialiased resize. The result is float 0-255, which the model's
normalisation takes as it takes uint8.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torchvision.ops import roi_align

MAX_ASPECT = 4.0 / 3.0  # canvas side = shorter side x this; longer sides are centre-cropped to it


def augments_on_device(setting: Literal["auto", "cpu", "device"], device: torch.device, cache: str = "auto") -> bool:
    """data.augment_on resolved: auto means on the device on CUDA, or wherever data.cache: device keeps the images."""
    if setting == "auto":
        return device.type == "cuda" or cache == "device"
    return setting == "device"


def canvas_side(shorter_side: int) -> int:
    """Side of the square canvas: room for any image of this shorter side and aspect up to 4:3."""
    return math.ceil(shorter_side * MAX_ASPECT - 1e-6)


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
