"""Scan image folders laid out one sub-folder per class into labelled file lists."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from transferkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

Samples = list[tuple[Path, int]]


VAL_FOLDERS = ("val", "validation", "valid")  # read as the validation split (first found) when val_dir is "val"

TRAIN, VAL, TEST, ALL = "train", "val", "test", "all"  # ALL: a root holding the class folders itself


@dataclass
class SplitScan:
    """One split folder as scanned: its class folders, its labelled images, and the files training leaves out."""

    role: str
    path: Path
    classes: list[str]
    samples: Samples
    empty: list[Path] = field(default_factory=list)   # class folders holding no image
    hidden: list[Path] = field(default_factory=list)  # hidden files (.DS_Store, ._copies, .folders) in class folders
    loose: list[Path] = field(default_factory=list)   # images lying in the split folder itself, in no class
    other: list[Path] = field(default_factory=list)   # files that are no image by their extension (notes.txt)


@dataclass
class FolderScan:
    """A data root as scanned once: its split folders (train/val/test, or one ALL folder of class folders)."""

    root: Path
    splits: list[SplitScan]

    @property
    def layout(self) -> str:
        """'splits' for train/ and test/ (and val/), ALL for a root whose sub-folders are the classes."""
        return ALL if self.splits[0].role == ALL else "splits"

    def split(self, role: str) -> SplitScan | None:
        """The scan of the split playing `role`, or None."""
        return next((s for s in self.splits if s.role == role), None)


@dataclass
class FolderSplits:
    """Labelled image files per split, with the class names their labels index."""

    classes: list[str]
    train: Samples
    test: Samples
    val: Samples | None = None
    root: Path | None = None
    skipped: list[str] = field(default_factory=list)
    scan: FolderScan | None = None  # the folder scan the splits came from (what check-data reports on)


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


def scan_split_folder(split_dir: Path, role: str = TRAIN, classes: list[str] | None = None) -> SplitScan:
    """Every image under `split_dir/<class>/` (recursively), labelled by its class's index, plus what is left out."""
    classes = class_folders(split_dir) if classes is None else classes
    scan = SplitScan(role, split_dir, classes, [])
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        images = []
        for parts in sorted(_files_under(str(class_dir))):
            path = Path(os.path.join(class_dir, *parts))
            if any(part.startswith(".") for part in parts):
                scan.hidden.append(path)
            elif os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS:
                images.append(path)
            else:
                scan.other.append(path)
        if not images:
            scan.empty.append(class_dir)
        scan.samples.extend((p, label) for p in images)
    beside = sorted(p for p in split_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    scan.loose = [p for p in beside if p.suffix.lower() in IMAGE_EXTENSIONS]
    if role != ALL:  # a root read as one folder of classes: its own files (a README, labels.csv) are not data
        scan.other += [p for p in beside if p.suffix.lower() not in IMAGE_EXTENSIONS]
    return scan


def _files_under(folder: str, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The files below `folder` (links to files included, linked folders not entered, as Path.rglob), each as the
    tuple of its path's parts relative to `folder`. os.scandir with strings: a Path per file made while walking
    cost more time and memory (measured in docs/performance.md, "The folder pipeline at scale")."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=True) and not entry.is_symlink():
                found += _files_under(entry.path, (*prefix, entry.name))
            elif entry.is_file():
                found.append((*prefix, entry.name))
    return found


def scan_split(split_dir: Path, classes: list[str]) -> Samples:
    """Every image under `split_dir/<class>/` (recursively), labelled by the index of its class."""
    scan = scan_split_folder(split_dir, TRAIN, classes)
    _refuse_empty(scan)
    return scan.samples


def _refuse_empty(scan: SplitScan) -> None:
    if scan.empty:
        raise DataError(f"{scan.empty[0]}: class folder has no images; add images or remove the folder")


def _refuse_one_class(scan: SplitScan) -> None:
    """DataError when a split holds one class folder: a one-class model scores a perfect, useless top-1."""
    if len(scan.classes) != 1:
        return
    only = scan.path / scan.classes[0]
    raise DataError(f"{scan.path}: only one class folder ({scan.classes[0]}/); a classifier needs two or more; "
                    f"{_where_classes_are(only)}")


def _where_classes_are(only: Path) -> str:
    """A hint naming the folder that probably holds the class folders, for a root that holds one class."""
    inner = [p for p in sorted(only.iterdir()) if p.is_dir() and not p.name.startswith(".")
             and any(is_image_file(f) for f in p.rglob("*"))]
    if len(inner) >= 2:
        return (f"its {len(inner)} sub-folders ({', '.join(p.name for p in inner[:4])}"
                f"{', ...' if len(inner) > 4 else ''}) look like the classes: point data.root at {only}")
    return f"add one folder per class beside {only.name}/, or point data.root at the folder that holds them"


def val_folder(root: Path, val_dir: str = "val") -> Path | None:
    """root/val_dir, or (for the default "val") root/val, root/validation or root/valid, whichever exists first.

    The one list of validation-folder names: training, `fit`, `compare-backbones` and `evaluate` all ask here.
    """
    for name in (VAL_FOLDERS if val_dir == "val" else (val_dir,)):
        if (root / name).is_dir():
            return root / name
    return None


def scan_folder(root: str | Path, train_dir: str = "train", test_dir: str = "test", val_dir: str = "val") -> FolderScan:
    """Scan a data root once: train/ and test/ (and val/, validation/ or valid/), or one folder of class folders.

    The one scan behind training, `check-data` and `preview`. DataError when the root is missing or holds
    only one of train/ and test/.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root.absolute()}: data root not found; set data.root to a folder with {train_dir}/ and "
                        f"{test_dir}/, or with one sub-folder per class")
    train_path, test_path = root / train_dir, root / test_dir
    if train_path.is_dir() != test_path.is_dir():
        missing = test_path if train_path.is_dir() else train_path
        raise DataError(f"{missing}: split folder not found; put {train_dir}/ and {test_dir}/ in {root}, or split "
                        f"one folder of classes with data.split_ratio (--set data.split_ratio=0.2)")
    if not train_path.is_dir():
        return FolderScan(root, [scan_split_folder(root, ALL)])
    val_path = val_folder(root, val_dir)
    if val_path is not None and val_path.resolve() == test_path.resolve():
        val_path = None  # data.test_dir names the validation folder (train/ and val/ alone): it is the test split
    roles = [(TRAIN, train_path), *([(VAL, val_path)] if val_path else []), (TEST, test_path)]
    return FolderScan(root, [scan_split_folder(path, role) for role, path in roles])


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
    """Read `root/train`, `root/test` (and `root/val`, `validation` or `valid`), or split one class-per-folder root.

    With `split_ratio` (the test share, e.g. 0.2) the root itself holds the class folders and each
    class is split with a seeded shuffle, so the same seed always gives the same split.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root.absolute()}: data root not found; set data.root to a folder with {train_dir}/ and "
                        f"{test_dir}/")
    if split_ratio is not None:
        if (root / train_dir).is_dir() and (root / test_dir).is_dir():
            raise DataError(f"data.split_ratio: {root} already holds {train_dir}/ and {test_dir}/ split folders, "
                            f"which a ratio split would read as two classes; remove data.split_ratio")
        scan = scan_folder(root, train_dir, test_dir, val_dir)
        whole = scan.splits[0]
        _refuse_one_class(whole)
        _refuse_empty(whole)
        rng = random.Random(seed)
        train: Samples = []
        test: Samples = []
        for label, name in enumerate(whole.classes):
            files = [p for p, lab in whole.samples if lab == label]
            rng.shuffle(files)
            n_test = max(1, round(len(files) * split_ratio))
            if n_test >= len(files):
                raise DataError(f"{root / name}: too few images ({len(files)}) to split; add images or lower data.split_ratio")
            test.extend((p, label) for p in sorted(files[:n_test]))
            train.extend((p, label) for p in sorted(files[n_test:]))
        return FolderSplits(classes=whole.classes, train=train, test=test, root=root, scan=scan)

    train_path, test_path = root / train_dir, root / test_dir
    if not train_path.is_dir() or not test_path.is_dir():
        missing = train_path if not train_path.is_dir() else test_path
        raise DataError(f"{missing}: split folder not found; put {train_dir}/ and {test_dir}/ in {root}, or split "
                        f"one folder of classes with data.split_ratio (--set data.split_ratio=0.2)")
    scan = scan_folder(root, train_dir, test_dir, val_dir)
    train_scan = scan.split(TRAIN)
    _refuse_one_class(train_scan)
    for other in scan.splits[1:]:
        check_same_classes(train_scan.path, train_scan.classes, other.path, other.classes)
    for split in scan.splits:
        _refuse_empty(split)
    val = scan.split(VAL)
    return FolderSplits(classes=train_scan.classes, train=train_scan.samples, test=scan.split(TEST).samples,
                        val=val.samples if val else None, root=root, scan=scan)


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
