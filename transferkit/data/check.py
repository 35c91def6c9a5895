"""Check a data set before training: decode every image and list each problem with its fix."""

from __future__ import annotations

import hashlib
import multiprocessing
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import track
from rich.table import Table

from transferkit.data.folder import ALL, TEST, TRAIN, VAL, FolderScan, FolderSplits, scan_folder
from transferkit.data.images import FIXES, ImageReadError, open_rgb

# Roles an image plays: test images are compared with train/val ones for duplicates; images of one
# class-per-folder root ("all") with each other, since a random split may put copies on both sides.
# Within one split, the same image in two classes is a label conflict.
__all__ = ["TRAIN", "VAL", "TEST", "ALL", "Problem", "CheckReport", "check_images", "check_splits", "check_folder",
           "check_table", "compare_images",
           "scan_problems", "inspect_image"]


@dataclass(frozen=True)
class Problem:
    """One problem found in a data set: its kind, the file or folder, and what to do."""

    kind: str
    path: Path | str  # a file, or a streamed sample's name
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

    def rows(self) -> list[list[str]]:
        """(kind, path relative to the data root, explanation) per problem, as strings."""
        rows = []
        for problem in self.problems:
            shown = problem.path  # a file, or a streamed sample's name (shard URL, key, source)
            if self.root is not None and isinstance(shown, Path) and shown.is_relative_to(self.root):
                shown = problem.path.relative_to(self.root)
            rows.append([problem.kind, str(shown), problem.message])
        return rows

    def table(self) -> Table:
        """A Rich table with one row per problem, paths shown relative to the data root (never cut)."""
        title = f"{self.images_checked} images checked, {len(self.problems)} problem(s)"
        table = Table("Problem", "Path", "Explanation", title=title)
        table.columns[1].no_wrap = True
        for row in self.rows():
            table.add_row(*row)
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


def check_images(images: list[tuple], progress: bool = True, workers: int = 1) -> CheckReport:
    """Decode every (role, path[, class]) image; report unreadable files, test images duplicating train/val
    ones, and one image under two classes of one split (a label conflict)."""
    paths = [image[1] for image in images]
    parallel = workers > 1 and len(paths) > 1
    with multiprocessing.Pool(min(workers, len(paths))) if parallel else nullcontext() as pool:
        results = pool.imap(inspect_image, paths, chunksize=16) if pool else map(inspect_image, paths)
        results = list(track(results, total=len(paths), description="Checking images", disable=not progress))
    return compare_images(images, results)


def compare_images(images: list[tuple], results: list[tuple[str, Problem | None]]) -> CheckReport:
    """The report on inspected images ((role, path[, class]) with their (digest, problem)): the unreadable ones,
    test images duplicating train/val ones, and one image under two classes of one split."""
    report = CheckReport(images_checked=len(images))
    first_seen: dict[str, Path] = {}
    in_split: dict[tuple[str, str], tuple[Path, str | None]] = {}
    for image, (digest, problem) in zip(images, results):
        role, path = image[0], image[1]
        label = image[2] if len(image) > 2 else None
        if problem is not None:
            report.problems.append(problem)
            continue
        other = in_split.setdefault((role, digest), (path, label))
        if label is not None and other[1] is not None and other[1] != label:
            report.problems.append(Problem("label-conflict", path, f"same image as {other[0]} but in class {label}, "
                                                                   f"not {other[1]}; keep it in one class only"))
            continue
        if role == TEST and digest in first_seen:
            report.problems.append(Problem("duplicate", path, f"same content as {first_seen[digest]}; "
                                                              f"delete one copy so the test score is not inflated"))
        elif role == ALL and other[0] != path:
            report.problems.append(Problem("duplicate", path, f"same content as {other[0]}; "
                                                              f"delete one copy so the test score is not inflated"))
        if role != TEST:
            first_seen.setdefault(digest, path)
    return report


def scan_problems(scan: FolderScan) -> list[Problem]:
    """What a folder scan found that training leaves out or refuses: class mismatches, empty classes,
    hidden files, images lying outside any class folder, and files that are no image (notes.txt)."""
    problems: list[Problem] = []
    reference = scan.splits[0]
    for split in scan.splits:
        if split.classes != reference.classes:
            problems.append(class_mismatch(reference.path, reference.classes, split.path, split.classes))
        problems += [Problem("empty-class", path, "class folder holds no images; add images or remove it")
                     for path in split.empty]
        problems += [Problem("hidden-file", path, "hidden file inside a class folder (e.g. .DS_Store or a macOS ._ "
                                                  "copy); training skips it; delete it") for path in split.hidden]
        problems += [Problem("loose-image", path, f"image outside any class folder of {split.path.name}/; training "
                                                  f"ignores it; move it into its class folder") for path in split.loose]
        problems += [Problem("non-image-file", path, "no image extension, so training ignores it; move it out of the "
                                                     "data folder (or, if it is an image, give it its extension)")
                     for path in split.other]
    return problems


def _images_of(scan: FolderScan) -> list[tuple[str, Path, str]]:
    return [(split.role, path, split.classes[label]) for split in scan.splits for path, label in split.samples]


def check_splits(splits: FolderSplits, progress: bool = True, workers: int = 1) -> CheckReport:
    """Decode every file a recipe's splits resolve to; report unreadable files, train/val-test duplicates,
    label conflicts, and the hidden and loose files the folder scan left out."""
    images = [(role, path, splits.classes[label])
              for role, samples in ((TRAIN, splits.train), (VAL, splits.val or []), (TEST, splits.test))
              for path, label in samples]
    report = check_images(images, progress, workers)
    if splits.scan is not None:
        report.problems[:0] = scan_problems(splits.scan)
    report.root = splits.root
    return report


def check_table(table, task: str, progress: bool = True, workers: int = 1) -> CheckReport:
    """Check a label table (data.labels) read as `task` reads it: every row's problem named by its CSV line
    (missing files, rows without labels, labels never seen in training, duplicate paths, non-numeric targets),
    then every listed image decoded (duplicates across splits, unreadable files)."""
    from transferkit.data.table import scan_table

    scan = scan_table(table, task)
    roles = {"train": TRAIN, "val": VAL, "test": TEST, "": TRAIN}
    images = [(roles[row.split], row.path, scan.outputs[row.target] if isinstance(row.target, int)
               else str(row.target)) for row in scan.rows]
    report = check_images(images, progress, workers)
    report.problems[:0] = [Problem("table-row", scan.file, f"line {line}: {message}") for line, message in scan.problems]
    report.root = scan.file.parent
    return report


def check_folder(root: str | Path, train_dir: str = "train", test_dir: str = "test", val_dir: str = "val",
                 progress: bool = True, workers: int = 1) -> CheckReport:
    """Check `root/train`, `root/test` (and `root/val`, `validation` or `valid`), or one class-per-folder root,
    reading every image."""
    scan = scan_folder(root, train_dir, test_dir, val_dir)
    report = check_images(_images_of(scan), progress, workers)
    report.problems[:0] = scan_problems(scan)
    report.root = scan.root
    return report


def class_mismatch(reference: Path, ref_classes: list[str], other: Path, other_classes: list[str]) -> Problem:
    """A class-mismatch problem listing the classes only one of two splits holds."""
    only_ref = sorted(set(ref_classes) - set(other_classes)) or "none"
    only_other = sorted(set(other_classes) - set(ref_classes)) or "none"
    return Problem("class-mismatch", other, f"classes differ from {reference.name}/: only in {reference.name}: "
                                            f"{only_ref}; only in {other.name}: {only_other}; "
                                            f"make every split hold the same class folders")
