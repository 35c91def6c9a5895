"""Device augmentation: exact crops, flips, edges that never blend in the canvas padding, augment_on resolution."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F

from conftest import tiny_recipe
from transferkit.data.device_augment import augments_on_device, canvas_side, crop_on_device
from transferkit.recipe.load import validate


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _seeded(fn, seed: int, *args):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args)


def test_box_of_the_output_size_reproduces_the_pixels_exactly():
    image = _image(32, 40)
    out = crop_on_device(image[None], torch.tensor([[4.0, 0.0, 36.0, 32.0]]), torch.tensor([False]), 32)
    assert out.shape == (1, 3, 32, 32) and out.dtype == torch.float32
    assert (out[0] - image[:, :, 4:36].float()).abs().max() < 1e-3


def test_whole_image_box_is_close_to_a_plain_resize():
    y, x = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    smooth = torch.stack([x * 3, y * 4, (x + y) * 2]).round().to(torch.uint8)  # gradients: bilinear is ~exact
    for size in (32, 24, 80):  # shrinking by 2, by a non-integer factor, and enlarging
        out = crop_on_device(smooth[None], torch.tensor([[0.0, 0.0, 64.0, 48.0]]), torch.tensor([False]), size)
        expected = F.resize(smooth, [size, size], antialias=True).float()
        inner = (slice(None), slice(2, -2), slice(2, -2))  # borders: clamping differs by up to a pixel's gradient
        assert (out[0][inner] - expected[inner]).abs().max() <= 2.0, size


def test_flip_flips_only_the_flagged_rows_and_channels_last_is_kept():
    images = torch.stack([_image(32, 40, 1), _image(32, 40, 2)])
    boxes = torch.tensor([[4.0, 0.0, 36.0, 32.0]] * 2)
    out = crop_on_device(images, boxes, torch.tensor([True, False]), 32, channels_last=True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out[0], images[0, :, :, 4:36].float().flip(-1), atol=1e-3)
    assert torch.allclose(out[1], images[1, :, :, 4:36].float(), atol=1e-3)


def test_padding_never_bleeds_into_crops_at_the_image_edges():
    from transferkit.data.device_augment import fit_to_canvas, paste_on_canvas
    from transferkit.data.device_bank import random_resized_boxes

    side = canvas_side(48)
    for shape in ((48, 60), (60, 48), (48, 48), (48, 100)):
        hwc = fit_to_canvas(torch.full((*shape, 3), 200, dtype=torch.uint8), side)
        canvas = paste_on_canvas(hwc, torch.zeros(side, side, 3, dtype=torch.uint8)).permute(2, 0, 1)
        sizes = torch.tensor([hwc.shape[:2]] * 40)
        boxes = random_resized_boxes(sizes, (0.08, 1.0), (0.75, 4 / 3), torch.Generator().manual_seed(0))
        out = crop_on_device(canvas.expand(40, 3, side, side), boxes, torch.rand(40) < 0.5, 16)
        assert (out - 200).abs().max() < 1e-3, shape


def test_augment_on_resolves_per_device():
    assert augments_on_device("auto", torch.device("cuda")) and not augments_on_device("auto", torch.device("cpu"))
    assert augments_on_device("device", torch.device("cpu")) and not augments_on_device("cpu", torch.device("cuda"))
    assert augments_on_device("auto", torch.device("cpu"), cache="device")  # cache: device means cropping there
    assert validate(tiny_recipe("x")).data.augment_on == "auto"
