"""Check a data set before training: decode every image and list each problem with its fix."""

from __future__ import annotations

import hashlib
import multiprocessing
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import track
from rich.table import Table

from transferkit.data.folder import FolderSplits, class_folders, is_image_file
from transferkit.data.images import FIXES, ImageReadError, open_rgb
from transferkit.errors import DataError

# Roles an image plays: test images are compared with train/val ones for duplicates; images of one
# class-per-folder root ("all") with each other, since a random split may put copies on both sides.
TRAIN, VAL, TEST, ALL = "train", "val", "test", "all"


@dataclass(frozen=True)
class Problem:
    """One problem found in a data set: its kind, the file or folder, and what to do."""

    kind: str
    path: Path
    message: str


@dataclass
class CheckReport:
    """The problems found in a data set and how many images were decoded."""

    problems: list[Problem] = field(default_factory=list)
    images_checked: int = 0
    root: Path | None = None

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def table(self) -> Table:
        """A Rich table with one row per problem, paths shown relative to the data root."""
        title = f"{self.images_checked} images checked, {len(self.problems)} problem(s)"
        table = Table("Problem", "Path", "Explanation", title=title)
        for problem in self.problems:
            shown = problem.path
            if self.root is not None and problem.path.is_relative_to(self.root):
                shown = problem.path.relative_to(self.root)
            table.add_row(problem.kind, str(shown), problem.message)
        return table


def inspect_image(path: Path) -> tuple[str, Problem | None]:
    """Read and fully decode one image; return the sha1 of its bytes ('' if empty) and its problem, if any."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "", Problem("unreadable", path, f"cannot read file ({exc.strerror}); {FIXES['unreadable']}")
    try:
        open_rgb(path, data)
    except ImageReadError as exc:
        return "", Problem(exc.kind, path, f"{exc.reason}; {FIXES[exc.kind]}")
    return hashlib.sha1(data).hexdigest(), None


def check_images(images: list[tuple[str, Path]], progress: bool = True, workers: int = 1) -> CheckReport:
    """Decode every (role, path) image and report unreadable files and test images duplicating train/val ones."""
    paths = [path for _, path in images]
    parallel = workers > 1 and len(paths) > 1
    with multiprocessing.Pool(min(workers, len(paths))) if parallel else nullcontext() as pool:
        results = pool.imap(inspect_image, paths, chunksize=16) if pool else map(inspect_image, paths)
        results = list(track(results, total=len(paths), description="Checking images", disable=not progress))
    report = CheckReport(images_checked=len(paths))
    first_seen: dict[str, Path] = {}
    for (role, path), (digest, problem) in zip(images, results):
        if problem is not None:
            report.problems.append(problem)
            continue
        if role in (TEST, ALL) and digest in first_seen:
            report.problems.append(Problem("duplicate", path, f"same content as {first_seen[digest]}; "
                                                              f"delete one copy so the test score is not inflated"))
        if role != TEST:
            first_seen.setdefault(digest, path)
    return report


def check_splits(splits: FolderSplits, progress: bool = True, workers: int = 1) -> CheckReport:
    """Decode every file a recipe's splits resolve to and report unreadable files and train/val-test duplicates."""
    images = [(role, path) for role, samples in ((TRAIN, splits.train), (VAL, splits.val or []), (TEST, splits.test))
              for path, _ in samples]
    report = check_images(images, progress, workers)
    report.root = splits.root
    return report


def check_folder(root: str | Path, train_dir: str = "train", test_dir: str = "test", val_dir: str = "val",
                 progress: bool = True, workers: int = 1) -> CheckReport:
    """Check `root/train`, `root/test` (and `root/val`), or one class-per-folder root, reading every image."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data root not found; pass a folder with {train_dir}/ and {test_dir}/ "
                        f"or with one sub-folder per class")
    train_path, test_path = root / train_dir, root / test_dir
    if train_path.is_dir() != test_path.is_dir():
        missing = test_path if train_path.is_dir() else train_path
        raise DataError(f"{missing}: split folder not found; put both {train_dir}/ and {test_dir}/ under {root}")
    if train_path.is_dir():
        splits = [(TRAIN, train_path), (VAL, root / val_dir), (TEST, test_path)]
        splits = [(role, path) for role, path in splits if path.is_dir()]
    else:
        splits = [(ALL, root)]
    problems: list[Problem] = []
    images: list[tuple[str, Path]] = []
    classes = {split_dir: class_folders(split_dir) for _, split_dir in splits}
    reference = splits[0][1]
    for role, split_dir in splits:
        if classes[split_dir] != classes[reference]:
            problems.append(class_mismatch(reference, classes[reference], split_dir, classes[split_dir]))
        for name in classes[split_dir]:
            paths, folder_problems = scan_class(split_dir / name)
            problems.extend(folder_problems)
            images.extend((role, path) for path in paths)
    report = check_images(images, progress, workers)
    report.problems[:0] = problems
    report.root = root
    return report


def scan_class(class_dir: Path) -> tuple[list[Path], list[Problem]]:
    """The images under one class folder, plus its hidden files and an empty-class problem if it has no image."""
    files = sorted(p for p in class_dir.rglob("*") if p.is_file())
    problems = [Problem("hidden-file", p, "hidden file inside a class folder (e.g. .DS_Store or a macOS ._ copy); "
                                          "delete it") for p in files if p.name.startswith(".")]
    images = [p for p in files if is_image_file(p)]
    if not images:
        problems.append(Problem("empty-class", class_dir, "class folder holds no images; add images or remove it"))
    return images, problems


def class_mismatch(reference: Path, ref_classes: list[str], other: Path, other_classes: list[str]) -> Problem:
    """A class-mismatch problem listing the classes only one of two splits holds."""
    only_ref = sorted(set(ref_classes) - set(other_classes)) or "none"
    only_other = sorted(set(other_classes) - set(ref_classes)) or "none"
    return Problem("class-mismatch", other, f"classes differ from {reference.name}/: only in {reference.name}: "
                                            f"{only_ref}; only in {other.name}: {only_other}; "
                                            f"make every split hold the same class folders")
