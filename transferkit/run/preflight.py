"""The checks of a recipe against what is installed and on disk: registered names, their options, the
backbone's weights and the data root. run/validation.py runs them, for every variant, in its environment and
data phases.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from transferkit.errors import DataError, NotRegisteredError, SpecError, WeightsError
from transferkit.recipe.messages import first_problem, key_line, override_for, where_in_recipe
from transferkit.recipe.spec import ExperimentSpec
from transferkit.registry import CALLBACKS, DATASETS, HEADS, LOGGERS, LR_POLICIES, OPTIMIZERS, TASKS, strict_model


class Where:
    """Builds the '<file> line N: [variant V: ]' (or '--set K=V: ') prefix of a message about one field."""

    def __init__(self, source: str, variant: str, base_variant: str, overrides: list[str] | None):
        self.source, self.variant, self.base_variant = source, variant, base_variant
        self.overrides = overrides or []
        try:
            self.text = Path(source).read_text(encoding="utf-8") if Path(source).is_file() else None
        except (OSError, UnicodeDecodeError, ValueError):
            self.text = None

    def __call__(self, field_name: str) -> str:
        """The prefix for `field_name`: the variant's own --set or key first, then the base's --set or key."""
        keys = tuple(field_name.split("."))
        in_variant = bool(self.variant) and self.variant != self.base_variant
        label = f"variant {self.variant}: " if in_variant else ""
        if in_variant:
            own = override_for(("variants", self.variant, *keys), self.overrides)
            if own is not None:
                return f"--set {own}: {label}"
            if key_line(self.text, ("variants", self.variant, *keys)):
                return where_in_recipe(self.source, field_name, self.variant, self.base_variant)
        culprit = override_for(keys, self.overrides)
        if culprit is not None:
            return f"--set {culprit}: {label}"
        return where_in_recipe(self.source, field_name, self.variant, self.base_variant)


def _plugged(spec: ExperimentSpec):
    """(field, index, registry, item) of every train.callbacks and train.loggers entry."""
    for field_name, registry, items in (("train.callbacks", CALLBACKS, spec.train.callbacks),
                                        ("train.loggers", LOGGERS, spec.train.loggers)):
        for index, item in enumerate(items):
            yield field_name, index, registry, item


def _anchor(key: str) -> str:
    """The dotted key whose YAML line a message points at: 'train.callbacks' for 'train.callbacks[1].options.x'."""
    return key.split("[")[0]


def check_references(spec: ExperimentSpec, source: str = "recipe", variant: str = "",
                     overrides: list[str] | None = None) -> None:
    """SpecError naming the field when the recipe names an unregistered head, dataset, policy, optimizer or
    backbone; a plugin that failed to load is named in the message (registry.missing_note), the name may be its."""
    from transferkit.model.backbones import check_backbone

    where = Where(source, variant, spec.base_variant, overrides)
    for field_name, registry, value in (("task.name", TASKS, spec.task.name),
                                        ("head.name", HEADS, spec.head.name),
                                        ("data.dataset", DATASETS, spec.data.dataset),
                                        ("lr_policy.name", LR_POLICIES, spec.lr_policy.name),
                                        ("optimizer.name", OPTIMIZERS, spec.optimizer.name)):
        try:
            registry.get(value)
        except NotRegisteredError as exc:
            raise SpecError(f"{where(field_name)}{field_name}: {exc}") from None
    for field_name, index, registry, item in _plugged(spec):
        try:
            registry.get(item.name)
        except NotRegisteredError as exc:
            raise SpecError(f"{where(field_name)}{field_name}[{index}]: {exc}") from None
    try:
        check_backbone(spec.backbone)
    except SpecError as exc:
        field_name = str(exc).partition(":")[0]
        raise SpecError(f"{where(field_name)}{exc}") from None


def check_options(spec: ExperimentSpec, source: str = "recipe", variant: str = "",
                  overrides: list[str] | None = None) -> None:
    """SpecError unless head.options, data.options, lr_policy.options and each train.callbacks/loggers entry's
    options fit what the named item declared; also when such an entry cannot run here (its extra is missing)."""
    where = Where(source, variant, spec.base_variant, overrides)
    plugged = [(f"{field}[{index}].options", registry, item.name, item.options)
               for field, index, registry, item in _plugged(spec)]
    for field_name, registry, name, values in [("task.options", TASKS, spec.task.name, spec.task.options),
                                               ("head.options", HEADS, spec.head.name, spec.head.options),
                                               ("data.options", DATASETS, spec.data.dataset, spec.data.options),
                                               ("lr_policy.options", LR_POLICIES, spec.lr_policy.name,
                                                spec.lr_policy.options), *plugged]:
        model = registry.options_model(name)
        if model is None:
            if values:
                key = f"{field_name}.{next(iter(values))}"
                section = field_name.rsplit(".", 1)[0]
                settings = "" if "[" in field_name else f" (its settings are the other {section}.* keys)"
                raise SpecError(f"{where(_anchor(key))}{key}: {registry.kind} '{name}' takes no options{settings}; "
                                f"remove {field_name}")
            continue
        try:
            strict_model(model).model_validate(values)
        except ValidationError as exc:
            loc, fix = first_problem(exc, strict_model(model))
            key = f"{field_name}.{loc}" if loc else field_name
            raise SpecError(f"{where(_anchor(key))}{key}: {fix} ({registry.kind} '{name}' options)") from None
    for field_name, index, registry, item in _plugged(spec):
        missing = getattr(registry.get(item.name), "missing_requirement", None)
        problem = missing() if callable(missing) else None
        if problem:
            raise SpecError(f"{where(field_name)}{field_name}[{index}]: {problem}")


def check_data_root(spec: ExperimentSpec, source: str = "recipe", variant: str = "",
                    overrides: list[str] | None = None) -> None:
    """DataError when the dataset needs data.root and it is unset, or when data.root is not a folder.

    The message shows the absolute path tried and the rule that made it: relative to the recipe file's
    folder, or to the working directory for `--set` and recipes given as dicts.
    """
    where = Where(source, variant, spec.base_variant, overrides)
    if spec.data.source == "webdataset":
        check_shard_source(spec, where)
        return
    root = spec.data.root
    if spec.data.labels:
        table = Path(spec.data.labels.file).expanduser().absolute()
        if not table.is_file():
            raise DataError(f"{where('data.labels')}data.labels: {table} not found; give the path of the label "
                            f"table (CSV), relative to the recipe file's folder (to the working directory with --set)")
        if not root:
            return  # the table's paths are relative to its own folder
    if not root:
        if getattr(DATASETS.get(spec.data.dataset), "requires_root", False):
            raise DataError(f"{where('data.root')}data.root: not set; point it at a folder with train/ and test/ "
                            f"class folders (or one folder per class and data.split_ratio), in the recipe or with "
                            f"--set data.root=PATH")
        return
    path = Path(root).expanduser().absolute()
    if path.is_dir():
        return
    prefix = where("data.root")
    if prefix.startswith("--set ") or not Path(source).is_file():
        rule = "relative paths are taken from the working directory"
    else:
        rule = "a relative path in a recipe is taken from the recipe file's folder"
    what = "is a file, not a folder" if path.exists() else "not found"
    raise DataError(f"{prefix}data.root: folder {path} {what} ({rule}); set data.root to the folder holding "
                    f"the data")


def check_shard_source(spec: ExperimentSpec, where: Where) -> None:
    """DataError (one line, prefixed with where the recipe sets data.urls) when streamed shards cannot be read now:
    webdataset or the URL's fsspec package missing, the index or a shard unreachable, a URL the index does not
    list, labels of another task, or a batch larger than the training split."""
    from transferkit.data.shard_index import check_reachable, shard_splits
    from transferkit.data.shard_urls import expand, missing_protocol, webdataset_module
    from transferkit.tasks import task_class

    d = spec.data
    try:
        webdataset_module()
        for role in ("train", "val", "test", "index"):
            written = getattr(d.urls, role)
            urls = [written] if role == "index" and written else expand(written) if written else []
            problem = next(filter(None, map(missing_protocol, urls)), None)
            if problem:
                raise DataError(f"data.urls.{role}: {problem}")
        splits = shard_splits(d, task_class(spec.task.name).labels_as)
        check_reachable(splits)
    except DataError as exc:
        raise DataError(f"{where('data.urls')}{exc}") from None
    if d.batch_size != "auto" and d.batch_size > len(splits.train):
        raise DataError(f"{where('data.batch_size')}data.batch_size: {d.batch_size} is more than the "
                        f"{len(splits.train)} training images in the shards; use at most {len(splits.train)}")


def check_task(spec: ExperimentSpec, source: str = "recipe", variant: str = "",
               overrides: list[str] | None = None) -> None:
    """SpecError naming the field for settings the recipe's task cannot honour (regression with class weights,
    a metric the task does not report, a loss it does not take)."""
    for field_name, message in TASKS.get(spec.task.name).contradictions(spec):
        raise SpecError(f"{Where(source, variant, spec.base_variant, overrides)(field_name)}{field_name}: {message}")


def check_weights(spec: ExperimentSpec, source: str = "recipe", variant: str = "",
                  overrides: list[str] | None = None) -> None:
    """WeightsError / SpecError when backbone.weights names a missing file or weights that do not fit, or
    train.init_from no file."""
    from transferkit.model.backbones import check_weights_fit, is_weight_file
    from transferkit.registry import WEIGHT_SOURCES

    where = Where(source, variant, spec.base_variant, overrides)
    weights = spec.backbone.weights
    if weights and weights not in WEIGHT_SOURCES and is_weight_file(weights):
        path = Path(weights).expanduser().absolute()
        if path.is_dir():
            raise SpecError(f"{where('backbone.weights')}backbone.weights: {path} is a folder, not a weights file; "
                            f"give the path of the .pth/.pt/.safetensors file inside it")
        if not path.is_file():
            raise SpecError(f"{where('backbone.weights')}backbone.weights: file {path} not found; "
                            f"give the path of a .pth/.pt/.safetensors state dict (a relative path in a recipe "
                            f"is taken from the recipe file's folder, one given with --set from the working "
                            f"directory)")
    try:
        check_weights_fit(spec.backbone)
    except (SpecError, WeightsError) as exc:
        raise type(exc)(f"{where('backbone.weights')}{exc}") from None
    start = spec.train.init_from
    if start and not Path(start).expanduser().is_file():
        raise SpecError(f"{where('train.init_from')}train.init_from: {start} is not a file; give the best.pt or last.pt "
                        f"of a finished run (`transferkit continue RUN` finds it)")


__all__ = ["Where", "check_references", "check_options", "check_task", "check_data_root", "check_weights"]
