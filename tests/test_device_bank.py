"""Training images resident on the device (data.cache: device): canvases, crop boxes, epochs, resume and a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from conftest import make_image_folder, tiny_recipe
from transferkit import Experiment
from transferkit.data.cache import decode_resized
from transferkit.data.device_augment import canvas_side
from transferkit.data.device_bank import DeviceBatches, DeviceImageBank, random_resized_boxes
from transferkit.errors import DataError, SpecError
from transferkit.callbacks.checkpoint import load_checkpoint

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def _torchvision_boxes(h: int, w: int, n: int, scale=SCALE, ratio=RATIO) -> torch.Tensor:
    crop, image = v2.RandomResizedCrop(1, scale=scale, ratio=ratio), torch.zeros(3, h, w)
    params = [crop.make_params([image]) for _ in range(n)]
    return torch.tensor([[p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]] for p in params],
                        dtype=torch.float32)


@pytest.mark.parametrize("shape", [(48, 64), (64, 48), (48, 48), (10, 10)])
def test_boxes_have_random_resized_crops_distribution(shape):
    h, w = shape
    n = 4000
    torch.manual_seed(0)
    ours = random_resized_boxes(torch.tensor([[h, w]] * n), SCALE, RATIO, torch.Generator().manual_seed(1))
    theirs = _torchvision_boxes(h, w, n)
    assert torch.equal(ours, ours.round())
    assert (ours[:, :2] >= 0).all() and (ours[:, 2] <= w).all() and (ours[:, 3] <= h).all()
    assert (ours[:, 2] > ours[:, 0]).all() and (ours[:, 3] > ours[:, 1]).all()

    def stats(b):
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        return torch.stack([(bw * bh).mean() / (h * w), (bw / bh).mean(), (b[:, 0] / (w - bw + 1)).mean(),
                            (b[:, 1] / (h - bh + 1)).mean()])

    # means of area share, aspect and relative position agree within a few standard errors of 4000 draws
    assert torch.allclose(stats(ours), stats(theirs), atol=0.03), (stats(ours), stats(theirs))


def test_boxes_fall_back_to_torchvisions_centre_crop_when_no_try_fits():
    for h, w in ((48, 200), (200, 48)):  # the whole area at any allowed aspect never fits: centre crop within ratio
        ours = random_resized_boxes(torch.tensor([[h, w]] * 5), (1.0, 1.0), RATIO, torch.Generator().manual_seed(0))
        theirs = _torchvision_boxes(h, w, 1, scale=(1.0, 1.0))
        assert torch.equal(ours, theirs.expand(5, 4)), (ours[0], theirs)


def test_bank_holds_each_image_shrunk_fitted_and_pasted_with_edges_repeated(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(3, 1), size=(70, 45))
    Image.fromarray(np.full((45, 130, 3), 90, np.uint8)).save(root / "train" / "cat" / "wide.png")  # beyond 4:3
    Image.fromarray(np.full((30, 30, 3), 50, np.uint8)).save(root / "train" / "cat" / "small.png")  # below the cap
    samples = [(p, 0) for p in sorted((root / "train").rglob("*.*"))]
    bank = DeviceImageBank.build(samples, 37, "bilinear", torch.device("cpu"), threads=2, chunk=3)
    side = canvas_side(37)  # the largest shorter side once shrunk is the cap
    assert bank.canvases.shape == (len(samples), 3, side, side) and bank.canvases.dtype == torch.uint8
    for i, (path, _) in enumerate(samples):
        pixels = torch.from_numpy(decode_resized(path, 37, "bilinear", shrink_only=True))
        h, w = min(pixels.shape[0], side), min(pixels.shape[1], side)
        top, left = (pixels.shape[0] - h) // 2, (pixels.shape[1] - w) // 2
        canvas = bank.canvases[i].permute(1, 2, 0)
        assert tuple(bank.sizes[i].tolist()) == (h, w), path
        assert torch.equal(canvas[:h, :w], pixels[top:top + h, left:left + w]), path
        if h < side:
            assert torch.equal(canvas[h, :w], canvas[h - 1, :w])
        assert not canvas[h + 1:].any() and not canvas[:, w + 1:].any()
    assert tuple(bank.sizes[samples.index(next(s for s in samples if s[0].name == "small.png"))].tolist()) == (30, 30)


def _bank(n: int, labels=None) -> DeviceImageBank:
    canvases = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    labels = torch.tensor(labels if labels is not None else [i % 3 for i in range(n)])
    return DeviceImageBank(canvases, torch.tensor([[6, 8]] * n), labels, [])


def _epoch(batches: DeviceBatches, epoch: int, skip: int = 0) -> list:
    batches.sampler.set_epoch(epoch, skip)
    return [(b.images[:, 0, 0, 0].tolist(), b.boxes.tolist(), b.flips.tolist()) for b in batches]


def test_an_epoch_visits_every_image_once_in_a_seeded_order():
    batches = DeviceBatches(_bank(22), batch_size=4, seed=3, scale=SCALE, ratio=RATIO, hflip=True)
    first = _epoch(batches, 1)
    assert len(first) == len(batches) == 6
    seen = [i for images, _, _ in first for i in images]
    assert sorted(seen) == list(range(22)) and seen != list(range(22))
    for images, boxes, flips in first:
        assert len(images) == len(boxes) == len(flips)
    assert _epoch(batches, 1) == first  # a function of (seed, epoch)
    assert _epoch(batches, 2) != first
    flips = [f for _, _, fl in first + _epoch(batches, 2) + _epoch(batches, 3) for f in fl]
    assert 0 < sum(flips) < len(flips)


def test_labels_travel_with_their_images():
    bank = _bank(10, labels=[i * 7 % 5 for i in range(10)])
    batches = DeviceBatches(bank, batch_size=3, seed=0, scale=SCALE, ratio=RATIO, hflip=False)
    batches.sampler.set_epoch(1)
    for batch in batches:
        assert batch.labels.tolist() == [i * 7 % 5 for i in batch.images[:, 0, 0, 0].tolist()]
        assert not batch.flips.any()


def test_a_resumed_epoch_continues_with_the_same_images_and_boxes():
    batches = DeviceBatches(_bank(20), batch_size=4, seed=1, scale=SCALE, ratio=RATIO, hflip=True)
    whole = _epoch(batches, 2)
    assert _epoch(batches, 2, skip=8) == whole[2:]
    assert len(batches) == 3


def test_a_lone_last_image_is_dropped_as_by_the_data_loader():
    batches = DeviceBatches(_bank(9), batch_size=4, seed=0, scale=SCALE, ratio=RATIO, hflip=True)
    batches.sampler.set_epoch(1)
    assert len(batches) == 2 and [len(b.labels) for b in batches] == [4, 4]


def test_unreadable_training_files_stop_or_are_carried_aside(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(3, 1))
    broken = root / "train" / "dog" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    samples = [(p, 0) for p in sorted((root / "train").rglob("*.jpg"))]
    with pytest.raises(DataError, match="broken.jpg"):
        DeviceImageBank.build(samples, 32, "bilinear", torch.device("cpu"), on_bad_image="fail")
    bank = DeviceImageBank.build(samples, 32, "bilinear", torch.device("cpu"), on_bad_image="skip")
    assert len(bank) == len(samples) - 1 and [b.path for b in bank.bad] == [str(broken)]
    batches = DeviceBatches(bank, 4, 0, SCALE, RATIO, True)
    batches.sampler.set_epoch(1)
    assert [len(b.bad) for b in batches] == [1, 0]  # reported once per epoch, with the first batch


def test_training_on_resident_images_changes_weights_and_needs_device_augmentation(image_root, tmp_path, monkeypatch):
    calls = []
    original = DeviceImageBank.build.__func__

    def counting(cls, samples, *args, **kwargs):
        bank = original(cls, samples, *args, **kwargs)
        calls.append(len(bank))
        return bank

    monkeypatch.setattr(DeviceImageBank, "build", classmethod(counting))
    raw = tiny_recipe(image_root, data={"cache": "device"}, train={"epochs": 2},  # augment_on auto, on the CPU
                      output_dir=str(tmp_path / "runs"))
    from transferkit.run.assemble import build_variant
    from transferkit.recipe.load import validate

    initial = build_variant(validate(raw)).model.state_dict()
    result = Experiment.from_dict(raw).run(progress=False)
    trained = load_checkpoint(result["base"].run_dir / "last.pt")["model"]
    assert calls == [16]  # the 16 training images, once
    assert not torch.equal(initial["head.weight"], trained["head.weight"])
    assert not torch.equal(initial["backbone.conv1.weight"], trained["backbone.conv1.weight"])
    assert all(math.isfinite(row["train_loss"]) for row in result["base"].history)
    assert result["base"].history[-1]["test_accuracy"] >= 0.0

    cpu_augment = tiny_recipe(image_root, data={"augment_on": "cpu", "cache": "device"}, output_dir=str(tmp_path / "r2"))
    with pytest.raises(SpecError, match="data.cache: device .*data.augment_on: device"):
        Experiment.from_dict(cpu_augment).run(progress=False)
    host_cache = tiny_recipe(image_root, data={"augment_on": "device", "cache": "memory"}, output_dir=str(tmp_path / "r3"))
    with pytest.raises(SpecError, match="data.augment_on: device .*data.cache is memory"):
        Experiment.from_dict(host_cache).run(progress=False)


def test_an_interrupted_run_on_resident_images_resumes_exactly(tmp_path):
    import yaml

    from conftest import run_cli
    from test_resume import _assert_same_run, _run_with_fault

    root = make_image_folder(tmp_path / "data", per_class=(24, 4))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(root, train={"epochs": 2, "deterministic": True},
                                                 data={"batch_size": 4, "augment_on": "device", "cache": "device"})))
    reference = run_cli("run", str(recipe), "--output", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "out"
    stopped = _run_with_fault(tmp_path, "SIGINT", 12 + 5, "run", str(recipe), "--output", str(out))  # 12 steps an epoch
    assert stopped.returncode == 130, stopped.stderr
    assert load_checkpoint(out / "tiny" / "base" / "last.pt")["partial"]["step"] == 5
    resumed = run_cli("run", str(recipe), "--output", str(out), "--resume", "auto")
    assert resumed.returncode == 0 and "resuming epoch 2 at step 6 of" in resumed.stderr, resumed.stderr
    _assert_same_run(tmp_path / "ref" / "tiny" / "base", out / "tiny" / "base")


def test_any_seed_plans_an_epoch():
    batches = DeviceBatches(_bank(8), batch_size=4, seed=2**32 - 1, scale=SCALE, ratio=RATIO, hflip=True)
    assert len(_epoch(batches, 1)) == 2


def test_contradicting_cache_and_augmentation_settings_are_refused_when_read():
    from transferkit.recipe.load import validate

    with pytest.raises(SpecError, match="data.crop_scale: use two area shares"):
        validate(tiny_recipe("x", data={"crop_scale": [0.0, 1.0]}))
    with pytest.raises(SpecError, match="data.augment_on: device .*data.cache is none"):
        validate(tiny_recipe("x", data={"augment_on": "device", "cache": "none"}))


def test_augment_on_device_with_cache_auto_keeps_images_resident_off_cuda(image_root, tmp_path, monkeypatch):
    built = []
    original = DeviceImageBank.build.__func__
    monkeypatch.setattr(DeviceImageBank, "build", classmethod(lambda cls, *a, **k: built.append(1) or original(cls, *a, **k)))
    raw = tiny_recipe(image_root, data={"augment_on": "device"}, output_dir=str(tmp_path / "runs"))
    assert Experiment.from_dict(raw).run(progress=False)["base"].history
    assert built == [1]
