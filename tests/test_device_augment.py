"""Device augmentation: exact crops, flips, torchvision's crop-box distribution, and a run with augment_on: device."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from conftest import tiny_recipe
from transferkit import Experiment
from transferkit.data import device_augment
from transferkit.data.device_augment import CanvasCrop, augments_on_device, canvas_side, crop_on_device, stack_crops
from transferkit.data.loading import Batch, collate
from transferkit.data.transforms import train_transform
from transferkit.preprocess import Preprocessing
from transferkit.rundir import load_checkpoint
from transferkit.spec import DataSpec, validate


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
    crop = CanvasCrop(48, (0.08, 1.0), (0.75, 4 / 3), hflip=True)
    for shape in ((48, 60), (60, 48), (48, 48)):
        image = torch.full((3, *shape), 200, dtype=torch.uint8)
        samples = [_seeded(crop, seed, image) for seed in range(40)]
        images, boxes, flips = stack_crops(samples)
        out = crop_on_device(images, boxes, flips, 16)
        assert (out - 200).abs().max() < 1e-3, shape


@pytest.mark.parametrize("shape", [(48, 64), (64, 48), (48, 48), (48, 100), (120, 48)])
def test_boxes_follow_random_resized_crop_and_are_reproducible(shape):
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    crop = CanvasCrop(48, scale, ratio, hflip=True)
    side = canvas_side(48)
    assert side == 64
    image = _image(*shape)
    h, w = min(shape[0], side), min(shape[1], side)  # long sides beyond the canvas are centre-cropped
    flips = []
    for seed in range(200):
        sample = _seeded(crop, seed, image)
        again = _seeded(crop, seed, image)
        assert torch.equal(sample.box, again.box) and sample.flip == again.flip and torch.equal(sample.canvas, again.canvas)
        assert sample.canvas.shape == (3, side, side) and sample.canvas.dtype == torch.uint8
        x1, y1, x2, y2 = sample.box.tolist()
        assert all(v == int(v) for v in (x1, y1, x2, y2))
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        bw, bh = x2 - x1, y2 - y1
        if (bw, bh) != (w, h) or not (ratio[0] <= w / h <= ratio[1]):  # not the whole-image fallback
            # rounding w and h to whole pixels moves area and aspect by at most about a pixel's worth
            assert scale[0] * h * w * (1 - 2 / min(bw, bh)) - 1 <= bw * bh <= scale[1] * h * w
            assert ratio[0] * (1 - 1 / bh) - 1 / bh <= bw / bh <= ratio[1] * (1 + 1 / bh) + 1 / bh
        flips.append(sample.flip)
    assert 40 < sum(flips) < 160
    top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
    assert torch.equal(sample.canvas[:, :h, :w], image[:, top:top + h, left:left + w])
    assert not sample.canvas[:, h + 1:, :].any() and not sample.canvas[:, :, w + 1:].any()


def test_same_seed_draws_the_same_crop_and_flip_as_train_transform():
    prep = Preprocessing(input_size=32, resize_size=37)
    spec = DataSpec()
    image = _image(37, 49)  # a cached image: shorter side at the resize size, aspect within 4:3
    cpu, device = train_transform(prep, spec), device_augment.canvas_crop(prep, spec)
    for seed in range(20):
        expected = _seeded(cpu, seed, image)
        sample = _seeded(device, seed, image)
        x1, y1, x2, y2 = (int(v) for v in sample.box.tolist())
        mine = F.resized_crop(image, y1, x1, y2 - y1, x2 - x1, [32, 32], antialias=True)
        assert torch.equal(mine.flip(-1) if sample.flip else mine, expected), seed


def test_collate_makes_a_batch_with_boxes_and_flips():
    crop = CanvasCrop(37, (0.08, 1.0), (3 / 4, 4 / 3), hflip=True)
    items = [(_seeded(crop, s, _image(37, 44, s)), s % 2) for s in range(3)]
    batch = collate(items)
    assert isinstance(batch, Batch) and batch.images.shape == (3, 3, 50, 50)
    assert batch.boxes.shape == (3, 4) and batch.flips.dtype == torch.bool and batch.labels.tolist() == [0, 1, 0]
    assert torch.equal(batch.images[1], items[1][0].canvas)


def test_augment_on_resolves_per_device():
    assert augments_on_device("auto", torch.device("cuda")) and not augments_on_device("auto", torch.device("cpu"))
    assert augments_on_device("device", torch.device("cpu")) and not augments_on_device("cpu", torch.device("cuda"))
    assert validate(tiny_recipe("x")).data.augment_on == "auto"


def test_training_with_augment_on_device_runs_and_changes_weights(image_root, tmp_path, monkeypatch):
    calls = []
    original = device_augment.crop_on_device

    def counting(images, boxes, flips, size, channels_last=False):
        calls.append((tuple(images.shape), size))
        return original(images, boxes, flips, size, channels_last)

    monkeypatch.setattr("transferkit.engine.crop_on_device", counting)
    raw = tiny_recipe(image_root, data={"augment_on": "device"}, output_dir=str(tmp_path / "runs"))
    from transferkit.experiment import build_variant

    initial = build_variant(validate(raw)).model.state_dict()
    result = Experiment.from_dict(raw).run(progress=False)
    trained = load_checkpoint(result["base"].run_dir / "last.pt")["model"]
    assert calls and all(size == 32 for _, size in calls)
    assert calls[0][0][2:] == (50, 50)  # canvases of the 37 px resize went to the model's crop
    assert not torch.equal(initial["head.weight"], trained["head.weight"])
    assert math.isfinite(result["base"].final["train_loss"])
