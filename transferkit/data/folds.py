"""K-fold splits of the training data (data.kfold): scikit-learn's splitters, stratified by class, groups of
near-duplicates kept in one part, the same parts for every fold run of one seed."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from transferkit.data.folder import FolderSplits, Samples
from transferkit.errors import DataError


@dataclass
class FoldAssignment:
    """The pool of training images (train, and a validation folder's), each with its group and part (1..K)."""

    samples: Samples
    groups: list[str]
    parts: list[int]
    folds: int
    classes: list[str]  # the outputs the targets index

    def part(self, index: int) -> tuple[Samples, Samples]:
        """(training samples, held-out samples) of fold `index` (1..K)."""
        train = [s for s, p in zip(self.samples, self.parts) if p != index]
        held = [s for s, p in zip(self.samples, self.parts) if p == index]
        return train, held


def regex_groups(samples: Samples, pattern: str) -> list[str]:
    """Each sample's group from its file name: the regex's first capture group, else its whole match; a name it
    does not match is a group of its own. DataError when it matches no name at all (a wrong regex)."""
    compiled = re.compile(pattern)
    groups, matched = [], 0
    for path, _ in samples:
        found = compiled.search(Path(path).name)
        if found:
            matched += 1
            groups.append("re:" + (found.group(1) if compiled.groups and found.group(1) is not None
                                   else found.group(0)))
        else:
            groups.append(f"file:{path}")
    if samples and not matched:
        raise DataError(f"data.kfold.group_regex: '{pattern}' matches none of the {len(samples)} training file names "
                        f"(e.g. {Path(samples[0][0]).name}); fix the regex (it is searched in the file name)")
    return groups


def column_groups(samples: Samples, table, column: str) -> list[str]:
    """Each sample's group from a column of the label table; an empty cell is a group of its own."""
    from transferkit.data.table import column_by_path

    cells = column_by_path(table, column, "data.kfold.group_column")
    return [f"col:{cells[Path(path)]}" if cells.get(Path(path)) else f"file:{path}" for path, _ in samples]


def _splitter(folds: int, seed: int, stratified: bool, grouped: bool):
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if stratified:
        kind = StratifiedGroupKFold if grouped else StratifiedKFold
    else:
        kind = GroupKFold if grouped else KFold
    return kind(n_splits=folds, shuffle=True, random_state=seed)


def assign_folds(splits: FolderSplits, kfold, seed: int, table=None) -> FoldAssignment:
    """Deal the training pool (train plus any validation folder) into `kfold.folds` parts with the seed:
    stratified by class when the targets are classes, whole groups per part when a group rule is set.

    DataError when the pool has fewer groups than parts, or a fold would train without one of the classes.
    """
    samples = sorted([*splits.train, *(splits.val or [])], key=lambda s: str(s[0]))
    k = kfold.folds
    if kfold.group_regex:
        groups = regex_groups(samples, kfold.group_regex)
    elif kfold.group_column:
        groups = column_groups(samples, table, kfold.group_column)
    else:
        groups = [f"file:{path}" for path, _ in samples]
    distinct = len(set(groups))
    if distinct < k:
        raise DataError(f"data.kfold.folds: {k} parts need at least {k} groups of training images, and there are "
                        f"{distinct} ({len(samples)} images); lower data.kfold.folds")
    stratified = all(isinstance(label, int) for _, label in samples)
    labels = [label if stratified else 0 for _, label in samples]
    grouped = bool(kfold.group_regex or kfold.group_column)
    parts = [0] * len(samples)
    with warnings.catch_warnings():  # a class with fewer images than parts: checked below, in our words
        warnings.simplefilter("ignore", UserWarning)
        split = _splitter(k, seed, stratified, grouped).split(labels, labels, groups if grouped else None)
        for index, (_, held) in enumerate(split, start=1):
            for i in held:
                parts[i] = index
    assignment = FoldAssignment(samples, groups, parts, k, splits.classes)
    if stratified:
        _refuse_missing_class(assignment)
    return assignment


def _refuse_missing_class(assignment: FoldAssignment) -> None:
    classes = assignment.classes
    for index in range(1, assignment.folds + 1):
        train, _ = assignment.part(index)
        present = {label for _, label in train}
        missing = [i for i in range(len(classes)) if i not in present]
        if missing:
            name = classes[missing[0]]
            count = sum(label == missing[0] for _, label in assignment.samples)
            raise DataError(f"data.kfold.folds: class '{name}' has {count} training image(s), so fold {index} of "
                            f"{assignment.folds} would train without it; lower data.kfold.folds or add images of it")


def apply_fold(splits: FolderSplits, kfold, seed: int, table=None) -> FolderSplits:
    """`splits` with fold `kfold.index`'s held-out part as the validation split and the other parts as train."""
    train, held = assign_folds(splits, kfold, seed, table).part(kfold.index)
    return FolderSplits(splits.classes, train, splits.test, held, splits.root)
