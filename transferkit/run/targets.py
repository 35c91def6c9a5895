"""What `check-data` and `preview` read: a recipe file or name, a dataset name, a data folder or a label table."""

from __future__ import annotations

from pathlib import Path

from transferkit.errors import TransferkitError
from transferkit.plugins import load_plugins
from transferkit.registry import DATASETS, RECIPES


def folder_data_spec(target: str, overrides: list[str]):
    """The spec whose `data:` section reads folder TARGET as `fit` does (train/ alone, train/ and val/ read too;
    or the shards and index.json `transferkit shard` wrote, streamed), with --set overrides (paths relative to the
    working directory)."""
    from transferkit.data.shard_index import folder_recipe, is_shard_folder
    from transferkit.recipe.load import validate
    from transferkit.recipe.overrides import apply_overrides
    from transferkit.recipe.paths import resolve_override_paths
    from transferkit.run.preset_rules import LAYOUT, folder_layout, given_keys

    if is_shard_folder(target):  # the shards `transferkit shard` wrote there, streamed
        raw = apply_overrides(folder_recipe(target)[0], resolve_override_paths(overrides, Path.cwd()))
        return validate(raw, source="--set", overrides=overrides)
    raw = apply_overrides({"data": {"dataset": "folder", "root": str(Path(target).absolute())}},
                          resolve_override_paths(overrides, Path.cwd()))
    given = given_keys(apply_overrides({}, overrides))
    if not given & {f"data.{key}" for key in (*LAYOUT, "train_dir")}:  # every image shown: no split carved
        layout = folder_layout(Path(raw["data"]["root"]))
        raw["data"].update({k: v for k, v in layout.items() if k in ("root", "test_dir")})
    return validate(raw, source="--set", overrides=overrides)


def splits_for(target: str, root: str | None, overrides: list[str]):
    """FolderSplits from a recipe file, a registered recipe, a dataset name or a folder.

    A folder is read in the layouts check-data reads: train/ and test/ (and val/), a ratio split with
    --set data.split_ratio, or one sub-folder per class (every image shown as one split).
    """
    from transferkit.data.folder import ALL, FolderSplits, scan_folder
    from transferkit.recipe.spec import DataSpec, ExperimentSpec
    from transferkit.registry import suggest
    from transferkit.run.assemble import load_splits
    from transferkit.run.experiment import Experiment

    load_plugins()
    if Path(target).is_file() or target in RECIPES:
        return load_splits(Experiment.from_yaml(target, overrides).spec)
    if target in DATASETS and not Path(target).is_dir():
        if root is None and getattr(DATASETS.get(target), "requires_root", False):
            raise TransferkitError(f"{target}: this dataset reads a folder of class folders; give the folder itself "
                                   f"as TARGET (transferkit preview photos/), or --root DIR with the dataset's name")
        return load_splits(ExperimentSpec(data=DataSpec(dataset=target, root=root)))
    if Path(target).is_dir():
        spec = folder_data_spec(target, overrides)
        d = spec.data
        if d.source == "webdataset":
            return load_splits(spec)
        if d.split_ratio is None:
            scan = scan_folder(d.root, d.train_dir, d.test_dir, d.val_dir)
            if scan.layout == ALL:
                whole = scan.splits[0]
                return FolderSplits(whole.classes, whole.samples, [], root=scan.root, scan=scan)
        return load_splits(spec)
    raise TransferkitError(f"{target}: not a recipe file, registered recipe, dataset or folder"
                           f"{suggest(target, DATASETS.list() + RECIPES.list())}")


def label_table_of(target: str, overrides: list[str]):
    """(data.labels, how the task reads it) when TARGET is a label table (.csv, read as `--set task=...` says,
    single_label by default) or a recipe naming one; else None."""
    from transferkit.recipe.overrides import apply_overrides
    from transferkit.recipe.spec import ExperimentSpec, LabelTableSpec
    from transferkit.run.experiment import Experiment
    from transferkit.tasks import task_class

    load_plugins()
    if Path(target).suffix.lower() in (".csv", ".tsv"):
        raw = apply_overrides({}, overrides)
        spec = ExperimentSpec.model_validate({k: v for k, v in raw.items() if k == "task"})
        own = raw.get("data", {}).get("labels", {}) if isinstance(raw.get("data"), dict) else {}
        return LabelTableSpec(**{**(own if isinstance(own, dict) else {}), "file": target}), \
            task_class(spec.task.name).labels_as
    if Path(target).is_file() or target in RECIPES:
        spec = Experiment.from_yaml(target, overrides).spec
        if spec.data.labels:
            return spec.data.labels, task_class(spec.task.name).labels_as
    return None


def check_target(target: str, overrides: list[str], workers: int = 1, progress: bool = False):
    """check-data's report on TARGET: a label table's rows, a folder's layout and images, or a recipe's splits."""
    from transferkit.data.check import check_folder, check_splits, check_table
    from transferkit.data.shard_check import check_shards
    from transferkit.data.shard_index import ShardSplits

    table = label_table_of(target, overrides)
    if table is not None:
        return check_table(*table, workers=workers, progress=progress)
    if Path(target).is_dir():
        d = folder_data_spec(target, overrides).data
        if d.source == "files":
            return check_folder(Path(d.root), d.train_dir, d.test_dir, d.val_dir, workers=workers, progress=progress)
    splits = splits_for(target, None, overrides)
    if isinstance(splits, ShardSplits):
        return check_shards(splits, workers=workers, progress=progress)
    return check_splits(splits, workers=workers, progress=progress)
