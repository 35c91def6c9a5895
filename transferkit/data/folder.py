"""Scan image folders laid out one sub-folder per class into labelled file lists."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from transferkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

Samples = list[tuple[Path, int]]


@dataclass
class FolderSplits:
    """Labelled image files per split, with the class names their labels index."""

    classes: list[str]
    train: Samples
    test: Samples
    val: Samples | None = None
    root: Path | None = None
    skipped: list[str] = field(default_factory=list)


def is_image_file(path: Path) -> bool:
    """True for a visible file whose extension is a known image format."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the visible sub-folders of `split_dir` (one per class)."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: folder not found; check data.root")
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{split_dir}: no class sub-folders; put each class's images in a folder of its own")
    return names


def scan_split(split_dir: Path, classes: list[str]) -> Samples:
    """Every image under `split_dir/<class>/` (recursively), labelled by the index of its class."""
    samples: Samples = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        files = sorted(p for p in class_dir.rglob("*") if is_image_file(p)
                       and not any(part.startswith(".") for part in p.relative_to(class_dir).parts))
        if not files:
            raise DataError(f"{split_dir / name}: class folder has no images; add images or remove the folder")
        samples.extend((p, label) for p in files)
    return samples


def check_same_classes(reference: Path, ref_classes: list[str], other: Path, other_classes: list[str]) -> None:
    """Raise DataError listing the difference when two splits do not hold the same classes."""
    if ref_classes == other_classes:
        return
    only_ref = sorted(set(ref_classes) - set(other_classes))
    only_other = sorted(set(other_classes) - set(ref_classes))
    raise DataError(
        f"classes differ between {reference} and {other}: only in {reference.name}: {only_ref or 'none'}; "
        f"only in {other.name}: {only_other or 'none'}; make both splits hold the same class folders"
    )


def split_folder(root: str | Path, train_dir: str = "train", test_dir: str = "test", val_dir: str = "val",
                 split_ratio: float | None = None, seed: int = 0) -> FolderSplits:
    """Read `root/train`, `root/test` (and `root/val` if present), or split one class-per-folder root.

    With `split_ratio` (the test share, e.g. 0.2) the root itself holds the class folders and each
    class is split with a seeded shuffle, so the same seed always gives the same split.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data root not found; set data.root to a folder with {train_dir}/ and {test_dir}/")
    if split_ratio is not None:
        if (root / train_dir).is_dir() and (root / test_dir).is_dir():
            raise DataError(f"data.split_ratio: {root} already holds {train_dir}/ and {test_dir}/ split folders, "
                            f"which a ratio split would read as two classes; remove data.split_ratio")
        classes = class_folders(root)
        rng = random.Random(seed)
        train: Samples = []
        test: Samples = []
        for label, name in enumerate(classes):
            files = [p for p, _ in scan_split(root, [name])]
            rng.shuffle(files)
            n_test = max(1, round(len(files) * split_ratio))
            if n_test >= len(files):
                raise DataError(f"{root / name}: too few images ({len(files)}) to split; add images or lower data.split_ratio")
            test.extend((p, label) for p in sorted(files[:n_test]))
            train.extend((p, label) for p in sorted(files[n_test:]))
        return FolderSplits(classes=classes, train=train, test=test, root=root)

    train_path, test_path = root / train_dir, root / test_dir
    if not train_path.is_dir() or not test_path.is_dir():
        missing = train_path if not train_path.is_dir() else test_path
        raise DataError(f"{missing}: split folder not found; put {train_dir}/ and {test_dir}/ under data.root "
                        f"or set data.split_ratio to split one folder")
    classes = class_folders(train_path)
    check_same_classes(train_path, classes, test_path, class_folders(test_path))
    val = None
    val_path = root / val_dir
    if val_path.is_dir():
        check_same_classes(train_path, classes, val_path, class_folders(val_path))
        val = scan_split(val_path, classes)
    return FolderSplits(classes=classes, train=scan_split(train_path, classes),
                        test=scan_split(test_path, classes), val=val, root=root)


def _register() -> None:
    from transferkit.registry import DATASETS

    @DATASETS.register("folder", origin="transferkit")
    def folder(spec, seed: int = 0) -> FolderSplits:
        """Images in one sub-folder per class under data.root: train/ and test/ (optional val/), or split by ratio."""
        if not spec.root:
            raise DataError("data.root: not set; point it at a folder with train/ and test/ class folders")
        return split_folder(spec.root, spec.train_dir, spec.test_dir, spec.val_dir, spec.split_ratio, seed)

    folder.requires_root = True  # checked when the recipe is read


_register()
