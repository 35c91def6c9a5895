"""Labels from a table: a CSV of image paths and their labels (a class, a label set, or numbers), read once.

The one reader behind training, evaluation and `check-data`: every problem is named by its CSV line, and
training stops at the first (check-data lists them all). Paths are relative to the CSV's folder.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from transferkit.data.folder import FolderSplits, is_image_file
from transferkit.errors import DataError

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


@dataclass
class TableRow:
    """One usable row: its CSV line, image path, target (class index, 0/1 tuple or values) and split ('' unset)."""

    line: int
    path: Path
    target: object
    split: str


@dataclass
class TableScan:
    """A label table as read: its outputs (classes, labels or target columns), usable rows, and every problem."""

    file: Path
    outputs: list[str]
    rows: list[TableRow]
    problems: list[tuple[int, str]] = field(default_factory=list)  # (CSV line, message with the fix)

    def first_problem(self) -> str | None:
        """'<file> line N: message' of the first problem, or None."""
        if not self.problems:
            return None
        line, message = self.problems[0]
        more = f" ({len(self.problems) - 1} more: `transferkit check-data` lists them)" if len(self.problems) > 1 else ""
        return f"{self.file} line {line}: {message}{more}"


def _read_csv(file: Path):
    try:
        import pandas as pd
    except ImportError:
        raise DataError(f"data.labels: reading {file.name} needs pandas; pip install 'transferkit[tables]'") from None
    if not file.is_file():
        raise DataError(f"data.labels: {file} not found; give the path of the CSV (a relative path in a recipe is "
                        f"taken from the recipe file's folder)")
    try:
        sep = "\t" if file.suffix.lower() == ".tsv" else ","
        return pd.read_csv(file, dtype=str, keep_default_na=False, sep=sep, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{file}: not a readable CSV table ({str(exc).splitlines()[0]}); save it as "
                        f"comma-separated UTF-8 text with a header row") from None


def _label_columns(frame, table, file: Path) -> list[str]:
    columns = list(frame.columns)
    if table.path_column not in columns:
        raise DataError(f"{file} line 1: no '{table.path_column}' column (columns: {', '.join(columns)}); name the "
                        f"image path column {table.path_column}, or set data.labels.path_column")
    if table.columns:
        missing = [c for c in table.columns if c not in columns]
        if missing:
            raise DataError(f"{file} line 1: no column {', '.join(missing)} (columns: {', '.join(columns)}); fix "
                            f"data.labels.columns")
        return list(table.columns)
    if "label" in columns:
        return ["label"]
    rest = [c for c in columns if c not in (table.path_column, table.split_column)]
    if not rest:
        raise DataError(f"{file} line 1: no label column besides '{table.path_column}'; add a label column")
    return rest


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def image_path(base: Path, text: str) -> Path:
    """A table cell's image path: absolute as written, else relative to the table's folder `base`."""
    given = Path(text).expanduser()
    return given if given.is_absolute() else base / text


def column_by_path(table, column: str, setting: str) -> dict[Path, str]:
    """Each row's image path (resolved as training resolves it) -> its cell in `column`; DataError naming
    `setting` when the table has no such column."""
    file = Path(table.file).expanduser()
    frame = _read_csv(file)
    if column not in frame.columns:
        raise DataError(f"{setting}: {file} has no column '{column}' (columns: {', '.join(frame.columns)}); name "
                        f"one of its columns")
    return {image_path(file.parent, str(row[table.path_column]).strip()): str(row[column]).strip()
            for row in frame.to_dict("records") if str(row.get(table.path_column, "")).strip()}


def scan_table(table, task: str) -> TableScan:
    """Read data.labels for `task` (single_label, multi_label, regression); unusable rows become problems."""
    file = Path(table.file).expanduser()
    frame = _read_csv(file)
    columns = _label_columns(frame, table, file)
    if task == "single_label" and len(columns) != 1:
        raise DataError(f"{file} line 1: single_label takes one class column, and {len(columns)} are label columns "
                        f"({', '.join(columns)}); set data.labels.columns to the class column")
    delimited = task == "multi_label" and len(columns) == 1
    base, has_split = file.parent, table.split_column in frame.columns
    raw, problems, seen = [], [], {}
    for index, record in enumerate(frame.to_dict("records")):
        line = index + 2  # the header is line 1
        text = str(record[table.path_column]).strip()
        if not text:
            problems.append((line, f"empty {table.path_column}; give the image's path or remove the row"))
            continue
        path = image_path(base, text)
        if text in seen:
            problems.append((line, f"{text} is listed already on line {seen[text]}; keep one row per image"))
            continue
        seen[text] = line
        if not is_image_file(path):
            what = "not found" if not path.exists() else "not an image file"
            problems.append((line, f"{text}: {what} (paths are relative to {base}); fix the path or remove the row"))
            continue
        split = str(record.get(table.split_column, "")).strip().lower() if has_split else ""
        if has_split and split not in SPLIT_NAMES:
            problems.append((line, f"split '{split}' is none of train, val, test; fix the {table.split_column} cell"))
            continue
        cells = [str(record[c]).strip() for c in columns]
        if delimited:
            value = [part.strip() for part in cells[0].split(table.delimiter) if part.strip()]
        elif task == "single_label":
            value = cells[0]
            if not value:
                problems.append((line, f"no label in column '{columns[0]}'; fill it in or remove the row"))
                continue
        else:
            numbers = [_number(cell) for cell in cells]
            bad = [(c, cell) for c, cell, n in zip(columns, cells, numbers) if n is None]
            if bad:
                column, cell = bad[0]
                kind = "0 or 1" if task == "multi_label" else "a number"
                problems.append((line, f"{column} is '{cell}', not {kind}; fix the cell or remove the row"
                                 if cell else f"no value in column '{column}'; fill it in or remove the row"))
                continue
            if task == "multi_label" and any(n not in (0.0, 1.0) for n in numbers):
                column = columns[next(i for i, n in enumerate(numbers) if n not in (0.0, 1.0))]
                problems.append((line, f"{column} must be 0 or 1 (one column per label); fix the cell"))
                continue
            value = numbers
        raw.append((line, path, value, SPLIT_NAMES.get(split, "")))
    outputs = _outputs(task, columns, delimited, raw)
    rows = _targets(task, outputs, delimited, raw, problems)
    problems.sort()
    return TableScan(file, outputs, rows, problems)


def _outputs(task: str, columns: list[str], delimited: bool, raw: list) -> list[str]:
    """The head's output names: classes (sorted), labels (sorted, or the 0/1 columns), or target columns."""
    if task == "single_label" or delimited:
        training = [r for r in raw if r[3] in ("", "train")]
        values = [r[2] for r in training]
        names = {v for v in values} if task == "single_label" else {label for labels in values for label in labels}
        return sorted(names)
    return list(columns)


def _targets(task: str, outputs: list[str], delimited: bool, raw: list, problems: list) -> list[TableRow]:
    index = {name: i for i, name in enumerate(outputs)}
    rows = []
    for line, path, value, split in raw:
        if task == "single_label":
            if value not in index:
                problems.append((line, f"class '{value}' appears in no training row; add training images of it or "
                                       f"fix the label"))
                continue
            target = index[value]
        elif delimited:
            unknown = [label for label in value if label not in index]
            if unknown:
                problems.append((line, f"label '{unknown[0]}' appears in no training row; add training images of "
                                       f"it or fix the label"))
                continue
            target = tuple(1.0 if name in value else 0.0 for name in outputs)
        else:
            target = tuple(float(v) for v in value)
        rows.append(TableRow(line, path, target, split))
    return rows


def _carve(rows: list[TableRow], share: float, seed: int, stratified: bool) -> tuple[list, list]:
    """(kept, carved): a seeded `share` of the rows (of each class's when stratified), at least one each side."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(row.target if stratified else 0, []).append(row)
    rng, kept, carved = random.Random(seed), [], []
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        n = max(1, round(len(members) * share))
        if n >= len(members):
            raise DataError(f"data.split_ratio: {len(members)} row(s){' of class ' + str(key) if stratified else ''}"
                            f" are too few to carve a test split from; add rows or a split column")
        carved += members[:n]
        kept += members[n:]
    return kept, carved


def table_splits(data, task: str, seed: int = 0) -> FolderSplits:
    """The label table's rows as labelled splits; DataError at the first problem (check-data lists them all)."""
    scan = scan_table(data.labels, task)
    problem = scan.first_problem()
    if problem:
        raise DataError(problem)
    by_split: dict[str, list[TableRow]] = {"train": [], "val": [], "test": [], "": []}
    for row in scan.rows:
        by_split[row.split].append(row)
    if by_split[""]:
        if by_split["test"] or by_split["train"] or by_split["val"]:
            line = by_split[""][0].line
            raise DataError(f"{scan.file} line {line}: no split, while other rows name one; fill in every row's "
                            f"{data.labels.split_column} or none")
        if data.split_ratio is None:
            raise DataError(f"data.split_ratio: {scan.file.name} has no {data.labels.split_column} column; set "
                            f"data.split_ratio: 0.2 to carve a seeded test split, or add the column")
        by_split["train"], by_split["test"] = _carve(by_split[""], data.split_ratio, seed, task == "single_label")
    if not by_split["train"] or not by_split["test"]:
        missing = "train" if not by_split["train"] else "test"
        raise DataError(f"{scan.file}: no {missing} rows; mark some rows {missing} in the "
                        f"{data.labels.split_column} column")

    def samples(rows):
        return sorted(((row.path, row.target) for row in rows), key=lambda s: str(s[0]))

    return FolderSplits(scan.outputs, samples(by_split["train"]), samples(by_split["test"]),
                        samples(by_split["val"]) or None, scan.file.parent)
