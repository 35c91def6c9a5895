"""Correctness of the speed mechanisms: decoded-image cache, feature cache, channels_last (not their speed)."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image
from rich.console import Console
from torchvision.transforms.v2 import functional as F

from conftest import tiny_recipe
from transferkit import Experiment
from transferkit.data.cache import build_cache, decode_resized, disk_cache_dir, image_decoders, train_cache_size
from transferkit.data.images import open_rgb
from transferkit.data.loading import BadImage, ImageFileDataset, make_loader
from transferkit.data.transforms import eval_transform, train_transform
from transferkit.engine.optimization import Optimization
from transferkit.engine.trainer import Trainer
from transferkit.errors import DataError
from transferkit.run.assemble import build_variant
from transferkit.data.features import Extractor, cache_features
from transferkit.optim.optimizers import build_optimizer
from transferkit.callbacks.checkpoint import load_checkpoint
from transferkit.recipe.load import validate


def images_of(root):
    return sorted((root / "train").rglob("*.jpg")) + sorted((root / "test").rglob("*.jpg"))


def fresh(path, size=36):
    return F.pil_to_tensor(F.resize(open_rgb(path), size, antialias=True))


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cache_returns_the_pixels_of_a_fresh_decode(image_root, mode):
    paths = images_of(image_root)
    cache = build_cache(paths, 36, "bilinear", mode, image_root)
    assert len(cache) == len(paths)
    for path in paths:
        assert torch.equal(cache.decode(path), fresh(path))
    prep = build_variant(validate(tiny_recipe(image_root))).preprocessing
    transform = eval_transform(prep)
    cached = build_cache(paths, prep.resize_size, prep.interpolation, mode, image_root)
    assert torch.equal(transform(cached.decode(paths[0])), transform(open_rgb(paths[0])))


@pytest.mark.parametrize("mode", ["memory", "disk", "none"])
def test_evaluation_images_are_the_pixels_predict_sees_with_or_without_cache(tmp_path, mode):
    from conftest import make_image_folder
    from transferkit.inference.batches import ImagePreparer

    root = make_image_folder(tmp_path / "data", per_class=(1, 2), size=(320, 240))  # JPEGs decoded at 1/4 scale
    built = build_variant(validate(tiny_recipe(root)))
    eval_decode = image_decoders(built.splits, built.preprocessing, mode, train_size=114)[1]
    for path, _ in built.splits.test:
        assert torch.equal(eval_transform(built.preprocessing)(eval_decode(path)), ImagePreparer(built.preprocessing)(path))


def test_disk_cache_decodes_a_changed_file_again_and_keeps_the_others(image_root):
    paths = images_of(image_root)
    first = build_cache(paths, 36, "bilinear", "disk", image_root)
    kept = first.store.index[str(paths[1])]
    Image.new("RGB", (60, 50), (0, 255, 0)).save(paths[0], quality=95)
    stat = os.stat(paths[0])
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = build_cache(paths, 36, "bilinear", "disk", image_root)
    assert torch.equal(second.decode(paths[0]), fresh(paths[0]))
    assert second.decode(paths[0]).shape == (3, 36, 43)
    assert second.store.index[str(paths[1])] == kept
    assert (image_root / ".transferkit-cache").is_dir()


def test_disk_cache_of_a_read_only_folder_goes_to_the_transferkit_cache_dir(image_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_DATA", str(tmp_path / "tkcache"))
    image_root.chmod(0o555)
    try:
        folder = disk_cache_dir(image_root, 36, "bilinear")
        assert tmp_path / "tkcache" in folder.parents
        cache = build_cache(images_of(image_root), 36, "bilinear", "disk", image_root)
        assert not (image_root / ".transferkit-cache").exists()
        assert cache.store.pixels.is_relative_to(tmp_path / "tkcache")
    finally:
        image_root.chmod(0o755)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_a_bad_file_is_reported_with_the_same_message_as_without_cache(image_root, mode):
    bad = image_root / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError) as direct:
        open_rgb(bad)
    cache = build_cache(images_of(image_root), 36, "bilinear", mode, image_root)
    with pytest.raises(DataError) as cached:
        cache.decode(bad)
    assert str(cached.value) == str(direct.value)
    dataset = ImageFileDataset([(bad, 0)], lambda image: image, cache.decode)
    assert dataset[0] == BadImage(str(bad), str(direct.value))


def test_cache_none_decodes_files_directly(image_root):
    built = build_variant(validate(tiny_recipe(image_root)))
    train, evaluation = image_decoders(built.splits, built.preprocessing, "none", train_size=99)
    assert (train.func, train.keywords) == (evaluation.func, {"min_side": 99}) and evaluation.func is open_rgb
    assert evaluation.keywords == {"min_side": built.preprocessing.resize_size}
    assert open_rgb not in image_decoders(built.splits, built.preprocessing, "auto", train_size=99)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_training_images_keep_their_detail_and_evaluation_images_their_eval_resize(tmp_path, mode):
    from conftest import make_image_folder

    root = make_image_folder(tmp_path / "data", per_class=(2, 1), size=(90, 120))  # shorter side 90
    built = build_variant(validate(tiny_recipe(root)))  # 32 px crops, eval resize 37
    prep = built.preprocessing
    assert train_cache_size(32, 37, 0.08) == 114 and train_cache_size(32, 37, 1.0) == 37
    train_decode, eval_decode = image_decoders(built.splits, prep, mode, train_size=60)
    for path, _ in built.splits.train:
        shrunk = train_decode(path)
        assert shrunk.shape == (3, 80, 60)  # shorter side shrunk to the cap, never to the eval resize
        assert torch.equal(shrunk, torch.from_numpy(decode_resized(path, 60, prep.interpolation, True)).permute(2, 0, 1))
    large = image_decoders(built.splits, prep, mode, train_size=500)[0]
    assert large(built.splits.train[0][0]).shape == (3, 120, 90)  # a small image is kept at its own size
    for path, _ in built.splits.test:
        assert torch.equal(eval_transform(prep)(eval_decode(path)),
                           eval_transform(prep)(open_rgb(path, min_side=prep.resize_size)))
    together = image_decoders(built.splits, prep, mode, train_size=None)[0]  # e.g. features of the eval view
    assert together(built.splits.train[0][0]).shape[1:] == (49, 37)


def test_train_transform_runs_on_cached_uint8_tensors(image_root):
    paths = images_of(image_root)
    built = build_variant(validate(tiny_recipe(image_root)))
    cache = build_cache(paths, built.preprocessing.resize_size, "bilinear", "memory")
    dataset = ImageFileDataset([(paths[0], 0)], train_transform(built.preprocessing, built.spec.data), cache.decode)
    image, _ = dataset[(0, 123)]
    again, _ = dataset[(0, 123)]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert torch.equal(image, again)


def _probe(image_root, tmp_path, feature_cache: bool):
    """Two epochs of a frozen-backbone probe on the eval transform: through cached features, or through images."""
    spec = validate(tiny_recipe(image_root, seed=3, optimizer={"lr": 0.05}, train={"deterministic": True},
                                lr_policy={"name": "frozen_backbone", "feature_cache": feature_cache}))
    torch.manual_seed(0)
    built = build_variant(spec)
    cpu = torch.device("cpu")
    optimization = Optimization(build_optimizer(spec.optimizer, built.param_groups), device=cpu)
    prep = built.preprocessing
    train_ds = ImageFileDataset(built.splits.train, eval_transform(prep))
    test_ds = ImageFileDataset(built.splits.test, eval_transform(prep))
    train_loader = make_loader(train_ds, spec.data.batch_size, True, spec.seed, 0, cpu)
    test_loader = make_loader(test_ds, spec.data.batch_size, False, spec.seed, 0, cpu)
    forward = built.model
    if feature_cache:
        train_loader, evals = cache_features(Extractor(built.model, cpu), spec, train_ds, {"test": test_ds},
                                             spec.data.batch_size, 0, Console(quiet=True))
        test_loader, forward = evals["test"], built.model.head
    trainer = Trainer(built.model, optimization, device=cpu, forward=forward)
    stats = []
    for epoch in (1, 2):
        train_loader.sampler.set_epoch(epoch)
        stats.append((trainer.train_epoch(train_loader, epoch, 2), trainer.evaluate(test_loader)))
    return built.model.head, stats


def test_cached_feature_probe_trains_the_same_head_as_the_uncached_probe(image_root, tmp_path):
    cached_head, cached = _probe(image_root, tmp_path, True)
    plain_head, plain = _probe(image_root, tmp_path, False)
    assert torch.allclose(cached_head.weight, plain_head.weight, atol=1e-5)
    assert torch.allclose(cached_head.bias, plain_head.bias, atol=1e-5)
    for (c_train, c_test), (p_train, p_test) in zip(cached, plain):
        assert c_train.loss == pytest.approx(p_train.loss, abs=1e-5)
        assert c_test.accuracy == p_test.accuracy and c_train.examples == p_train.examples


def test_feature_cache_keeps_metrics_rows_and_checkpoints_the_same_shape(image_root, tmp_path):
    raw = tiny_recipe(image_root, train={"epochs": 2}, output_dir=str(tmp_path / "runs"),
                      lr_policy={"name": "frozen_backbone", "feature_cache": False},
                      variants={"cached": {"lr_policy": {"feature_cache": True}},
                                "views": {"lr_policy": {"feature_cache": True, "cache_views": 2}}})
    result = Experiment.from_dict(raw).run(progress=False)
    plain = result["base"]
    plain_ckpt = load_checkpoint(plain.run_dir / "last.pt")
    for name in ("cached", "views"):
        variant = result[name]
        assert [list(row) for row in variant.history] == [list(row) for row in plain.history]
        assert (variant.run_dir / "best.pt").is_file() and (variant.run_dir / "metrics.csv").is_file()
        ckpt = load_checkpoint(variant.run_dir / "last.pt")
        assert {k: v.shape for k, v in ckpt["model"].items()} == {k: v.shape for k, v in plain_ckpt["model"].items()}
        for key, value in ckpt["model"].items():
            if key.startswith("backbone."):
                assert torch.equal(value, plain_ckpt["model"][key]), key


@pytest.mark.parametrize("name", ["resnet18", "timm/tf_efficientnet_lite0"])
def test_channels_last_and_contiguous_outputs_agree(image_root, name):
    built = build_variant(validate(tiny_recipe(image_root, backbone={"name": name, "pretrained": False})))
    model = built.model.eval()
    images = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(images)
        model.to(memory_format=torch.channels_last)
        got = model(images.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_cache_views_holds_distinct_augmented_views_and_epochs_pick_among_them(image_root):
    spec = validate(tiny_recipe(image_root, lr_policy={"name": "frozen_backbone", "cache_views": 2}))
    built = build_variant(spec)
    train_ds = ImageFileDataset(built.splits.train, train_transform(built.preprocessing, spec.data))
    test_ds = ImageFileDataset(built.splits.test, eval_transform(built.preprocessing))
    train_loader, evals = cache_features(Extractor(built.model, torch.device("cpu")), spec, train_ds,
                                         {"test": test_ds}, 8, 0, Console(quiet=True))
    test_loader = evals["test"]
    views = train_loader.dataset.views
    assert views.shape[:2] == (2, len(built.splits.train)) and test_loader.dataset.views.shape[0] == 1
    assert not torch.allclose(views[0], views[1])
    picked = {train_loader.dataset[(0, seed)][0].sum().item() for seed in (10, 11)}
    assert len(picked) == 2
