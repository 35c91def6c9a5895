"""`transferkit shard FOLDER|labels.csv OUT`: a data set's splits written as WebDataset shards with their index.

The splits are read as `check-data` and `fit` read them: train/ and test/ (and val/) class folders, or one folder
of classes with `--set data.split_ratio=0.2`, or a label table with `--set task=...`; `--set data.val_split`,
`data.limit` and `seed` apply too, so the shards hold the very splits a recipe would train on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from transferkit.data.shard_index import INDEX_NAME, ShardIndex
from transferkit.data.shard_writer import ShardSettings, parse_size, write_shards
from transferkit.data.splits import recipe_splits
from transferkit.errors import TransferkitError
from transferkit.recipe.spec import ExperimentSpec
from transferkit.tasks import task_class


@dataclass
class ShardResult:
    """What `shard` wrote: the index and the folder it is in."""

    index: ShardIndex
    out: Path

    def recipe_lines(self) -> list[str]:
        """The data: section that trains on these shards (YAML lines)."""
        urls = {role: str(self.out / split.pattern) for role, split in self.index.splits.items()}
        lines = ["data:", "  source: webdataset", "  urls:"]
        lines += [f"    {role}: {urls[role]}" for role in ("train", "val", "test") if role in urls]
        if self.index.labels != "single_label":
            lines.insert(0, f"task: {self.index.labels}")
        return lines


def shard_spec(target: str, overrides: list[str]) -> ExperimentSpec:
    """The recipe spec whose data section reads TARGET (a folder, or a label table .csv/.tsv), with --set."""
    from transferkit.recipe.load import validate
    from transferkit.recipe.overrides import apply_overrides
    from transferkit.recipe.paths import resolve_override_paths

    path = Path(target).expanduser().absolute()
    if path.suffix.lower() in (".csv", ".tsv"):
        data = {"dataset": "folder", "labels": str(path)}
    elif path.is_dir():
        data = {"dataset": "folder", "root": str(path)}
    else:
        raise TransferkitError(f"{target}: not a folder or a label table (.csv); give the folder of class folders "
                               f"(train/ and test/) or the CSV of image paths and labels")
    raw = apply_overrides({"data": data}, resolve_override_paths(overrides, Path.cwd()))
    spec = validate(raw, source="--set", overrides=overrides)
    if spec.data.source != "files":
        raise TransferkitError("--set data.source: shard reads image files; leave data.source unset")
    return spec


def shard_target(target: str, out: str | Path, shard_size: str = "256MB", overrides: list[str] | None = None,
                 on_shard: Callable[[Path, int], None] = lambda path, images: None,
                 train_shards: int | None = None) -> ShardResult:
    """Write TARGET's splits as shards of about `shard_size` in OUT (a new or empty folder), then OUT/index.json;
    `train_shards`: the training split in exactly that many shards instead."""
    spec = shard_spec(target, overrides or [])
    size = parse_size(shard_size)
    if train_shards is not None and train_shards < 1:
        raise TransferkitError(f"--shards {train_shards}: give 1 or more")
    splits = recipe_splits(spec)
    labels = task_class(spec.task.name).labels_as
    out = Path(out).expanduser().absolute()
    settings = ShardSettings(size, spec.seed, train_shards)
    index = write_shards(splits, labels, out, settings, str(Path(target).absolute()), on_shard)
    return ShardResult(index, out)


__all__ = ["ShardResult", "shard_spec", "shard_target", "INDEX_NAME"]
