"""check_folder / check_splits: every kind of problem is reported with the right path; clean data is ok."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from transferkit.data.check import check_folder, check_splits
from transferkit.data.folder import split_folder
from transferkit.errors import DataError


def image(path: Path, seed: int, size: tuple[int, int] = (16, 12)) -> Path:
    """Save a distinct noise image (so no two files share a hash) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def clean_root(root: Path) -> Path:
    for seed, rel in enumerate(["train/cat/a.png", "train/cat/b.jpg", "train/dog/c.png", "train/dog/d.png",
                                "test/cat/e.png", "test/dog/f.png"]):
        image(root / rel, seed)
    return root


def kinds_and_paths(report) -> list[tuple[str, Path]]:
    return sorted((p.kind, p.path) for p in report.problems)


def test_clean_folder_is_ok(tmp_path):
    report = check_folder(clean_root(tmp_path), progress=False)
    assert report.ok and report.problems == [] and report.images_checked == 6


def test_every_problem_is_reported(tmp_path, monkeypatch):
    root = clean_root(tmp_path)
    (root / "train/cat/empty.jpg").touch()
    truncated = image(root / "train/cat/truncated.jpg", 10, (64, 64))
    truncated.write_bytes(truncated.read_bytes()[:300])
    (root / "train/dog/fake.png").write_text("not a PNG")
    Image.new("F", (4, 4)).save(root / "train/dog/float.tif")
    image(root / "train/dog/huge.png", 11, (40, 40))  # 1600 pixels, over the limit set below
    (root / "train/cat/.DS_Store").write_bytes(b"\0\1")
    (root / "train/bird").mkdir()
    (root / "test/bird").mkdir()
    shutil.copy(root / "train/cat/a.png", root / "test/dog/copy_of_a.png")
    image(root / "val/cat/v.png", 12)
    shutil.copy(root / "val/cat/v.png", root / "test/cat/copy_of_v.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

    report = check_folder(root, progress=False)

    assert kinds_and_paths(report) == sorted([
        ("zero-byte", root / "train/cat/empty.jpg"),
        ("truncated", root / "train/cat/truncated.jpg"),
        ("not-an-image", root / "train/dog/fake.png"),
        ("unreadable-mode", root / "train/dog/float.tif"),
        ("too-large", root / "train/dog/huge.png"),
        ("hidden-file", root / "train/cat/.DS_Store"),
        ("empty-class", root / "train/bird"),
        ("empty-class", root / "test/bird"),
        ("class-mismatch", root / "val"),
        ("duplicate", root / "test/dog/copy_of_a.png"),
        ("duplicate", root / "test/cat/copy_of_v.png"),
    ])
    assert not report.ok
    assert report.images_checked == 14
    messages = {p.path.name: p.message for p in report.problems}
    assert str(root / "train/cat/a.png") in messages["copy_of_a.png"]
    assert str(root / "val/cat/v.png") in messages["copy_of_v.png"]
    assert "only in train: ['bird', 'dog']" in messages["val"]
    assert all("\n" not in m for m in messages.values())


def test_duplicates_inside_one_train_class_are_not_reported(tmp_path):
    root = clean_root(tmp_path)
    shutil.copy(root / "train/cat/a.png", root / "train/cat/copy_of_a.png")
    assert check_folder(root, progress=False).ok


def test_one_image_in_two_classes_of_a_split_is_a_label_conflict(tmp_path):
    root = clean_root(tmp_path)
    shutil.copy(root / "train/cat/a.png", root / "train/dog/copy_of_a.png")
    report = check_folder(root, progress=False)
    assert kinds_and_paths(report) == [("label-conflict", root / "train/dog/copy_of_a.png")]
    message = report.problems[0].message
    assert str(root / "train/cat/a.png") in message and "class dog, not cat" in message
    # the same through a recipe's splits
    assert kinds_and_paths(check_splits(split_folder(root), progress=False)) == kinds_and_paths(report)


def test_single_class_per_folder_root(tmp_path):
    for seed, rel in enumerate(["cat/a.png", "cat/b.png", "dog/c.png"]):
        image(tmp_path / rel, seed)
    assert check_folder(tmp_path, progress=False).ok
    shutil.copy(tmp_path / "cat/a.png", tmp_path / "cat/z.png")  # a random split may put it on both sides
    report = check_folder(tmp_path, progress=False)
    assert kinds_and_paths(report) == [("duplicate", tmp_path / "cat/z.png")]
    shutil.copy(tmp_path / "cat/a.png", tmp_path / "dog/y.png")  # and this one under two labels
    assert kinds_and_paths(check_folder(tmp_path, progress=False)) == [("duplicate", tmp_path / "cat/z.png"),
                                                                        ("label-conflict", tmp_path / "dog/y.png")]


def test_workers_give_the_same_report(tmp_path):
    root = clean_root(tmp_path)
    (root / "train/cat/empty.jpg").touch()
    shutil.copy(root / "train/cat/a.png", root / "test/cat/copy.png")
    one = check_folder(root, progress=False)
    two = check_folder(root, progress=False, workers=2)
    assert two.problems == one.problems and two.images_checked == one.images_checked == 8


def test_check_splits_reads_what_a_recipe_resolves_to(tmp_path):
    root = clean_root(tmp_path)
    shutil.copy(root / "train/dog/c.png", root / "test/dog/copy.png")
    (root / "test/cat/broken.png").write_text("oops")
    report = check_splits(split_folder(root), progress=False)
    assert kinds_and_paths(report) == [("duplicate", root / "test/dog/copy.png"),
                                       ("not-an-image", root / "test/cat/broken.png")]
    assert report.images_checked == 8


def test_missing_split_or_root_raises(tmp_path):
    with pytest.raises(DataError, match="not found"):
        check_folder(tmp_path / "nowhere", progress=False)
    image(tmp_path / "train/cat/a.png", 0)
    with pytest.raises(DataError, match="test"):
        check_folder(tmp_path, progress=False)


def test_table_lists_each_problem(tmp_path):
    root = clean_root(tmp_path)
    (root / "train/cat/empty.jpg").touch()
    report = check_folder(root, progress=False)
    out = io.StringIO()
    Console(file=out, width=200).print(report.table())
    text = out.getvalue()
    assert "zero-byte" in text and "train/cat/empty.jpg" in text and "7 images checked, 1 problem" in text


def test_loose_and_hidden_files_and_a_validation_folder_are_seen_through_a_recipe(tmp_path):
    root = clean_root(tmp_path)
    image(root / "train/loose.png", 20)
    (root / "train/cat/._a.png").write_bytes(b"\0\1")
    image(root / "validation/cat/v.png", 21)
    image(root / "validation/dog/w.png", 22)
    splits = split_folder(root)
    assert [p.name for p, _ in splits.val] == ["v.png", "w.png"]  # validation/ is the val split
    report = check_splits(splits, progress=False)
    assert kinds_and_paths(report) == sorted([("loose-image", root / "train/loose.png"),
                                              ("hidden-file", root / "train/cat/._a.png")])
    assert report.images_checked == 8
    assert kinds_and_paths(check_folder(root, progress=False)) == kinds_and_paths(report)


def test_valid_folder_is_the_val_split_unless_val_dir_names_another(tmp_path):
    root = clean_root(tmp_path)
    image(root / "valid/cat/v.png", 21)
    image(root / "valid/dog/w.png", 22)
    assert len(split_folder(root).val) == 2
    assert split_folder(root, val_dir="holdout").val is None
