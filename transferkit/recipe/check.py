"""Cross-field checks that need only the recipe itself (no registries, no files): refused when it is read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transferkit.errors import SpecError
from transferkit.recipe.messages import override_for, where_in_recipe, yaml_line_of
from transferkit.recipe.search_space import check_search_space

if TYPE_CHECKING:
    from transferkit.recipe.load import Recipe
    from transferkit.recipe.spec import ExperimentSpec


def uses_feature_cache(spec: ExperimentSpec) -> bool:
    """True when the recipe trains a frozen backbone's head on cached features."""
    return spec.lr_policy.name == "frozen_backbone" and spec.lr_policy.feature_cache


def contradictions(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """(field, message with the fix) for every setting that contradicts another in `spec`."""
    found: list[tuple[str, str]] = []
    t, d = spec.train, spec.data
    if t.freeze_epochs and spec.lr_policy.name == "frozen_backbone":
        found.append(("train.freeze_epochs", "the frozen_backbone policy keeps the backbone frozen throughout; "
                                             "use lr_policy head_multiplier (or uniform) with freeze_epochs"))
    if t.freeze_epochs >= t.epochs:
        found.append(("train.freeze_epochs", f"{t.freeze_epochs} frozen epochs leave none of the {t.epochs} to "
                                             f"fine-tune; lower it or use lr_policy.name: frozen_backbone"))
    stop = t.early_stopping
    if stop and stop.metric != "auto" and t.best_metric != "auto" and stop.metric != t.best_metric:
        found.append(("train.early_stopping.metric", f"{stop.metric} differs from train.best_metric "
                                                     f"{t.best_metric}; best.pt and early stopping share one "
                                                     f"metric: set one of them"))
    if t.tta_on_val and not t.tta_flip:
        found.append(("train.tta_on_val", "flips the validation split as train.tta_flip flips the test split; set "
                                          "train.tta_flip: true, or remove train.tta_on_val"))
    if t.eval_test == "end":
        chosen = [(name, value) for name, value in (("train.best_metric", t.best_metric),
                                                    ("train.early_stopping.metric", stop.metric if stop else "auto"))
                  if value.startswith("test_")]
        for name, value in chosen:
            found.append((name, f"{value} selects on the test split every epoch, and train.eval_test: end "
                                f"evaluates it once after training; use a val_ metric, or train.eval_test: "
                                f"every_epoch"))
    if isinstance(t.class_weights, list) and any(w < 0 for w in t.class_weights):
        found.append(("train.class_weights", "weights must be zero or positive"))
    if t.probe_epochs and spec.lr_policy.name == "frozen_backbone":
        found.append(("train.probe_epochs", "the frozen_backbone policy is a probe already; use probe_epochs "
                                            "with a fine-tuning policy (uniform, head_multiplier)"))
    if t.freeze_bn_stats and spec.lr_policy.name == "frozen_backbone":
        found.append(("train.freeze_bn_stats", "the frozen_backbone policy keeps all backbone statistics already; "
                                               "remove train.freeze_bn_stats"))
    if d.kfold and d.val_split:
        found.append(("data.val_split", "data.kfold validates on the held-out fold; remove data.val_split"))
    if d.kfold and d.kfold.group_column and not d.labels:
        found.append(("data.kfold.group_column", "groups come from a column of the label table (data.labels); "
                                                 "with class folders use data.kfold.group_regex on the file names"))
    if uses_feature_cache(spec):
        if d.train_image_size and spec.lr_policy.cache_views == 0:
            found.append(("data.train_image_size", "a frozen-backbone feature cache trains on the evaluation view; "
                                                   "remove data.train_image_size, or set lr_policy.cache_views"))
        if t.tta_flip:
            found.append(("train.tta_flip", "cached features have no image to mirror; set "
                                            "lr_policy.feature_cache: false, or train.tta_flip: false"))
        if d.cache == "device":
            found.append(("data.cache", "device crops training images on the device, which a frozen-backbone "
                                        "feature cache does not do; set data.cache: auto"))
        if d.augment.mixes_batches:
            found.append(("data.augment", "mixup and cutmix blend images, not cached features; set "
                                          "lr_policy.feature_cache: false to train on images"))
        if d.augment.per_image and spec.lr_policy.cache_views == 0:
            found.append(("data.augment", "the feature cache's single view uses the eval transform; set "
                                          "lr_policy.cache_views: K for K augmented views, or "
                                          "lr_policy.feature_cache: false"))
    return found + streaming_contradictions(spec)


def streaming_contradictions(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """(field, message) for settings that need random access to the images or every image at hand, which streamed
    shards (data.source: webdataset) do not give: refused when the recipe is read."""
    d = spec.data
    if d.source != "webdataset":
        return []
    found = [(f"data.{name}", f"the images come from data.urls with data.source: webdataset; remove data.{name}")
             for name in ("root", "labels") if getattr(d, name)]
    if d.dataset != "folder":
        found.append(("data.dataset", "the images come from data.urls with data.source: webdataset; remove "
                                      "data.dataset"))
    carving = {"split_ratio": "a test split", "val_split": "a validation split", "limit": "a random subset"}
    for name, what in carving.items():
        if getattr(d, name) is not None:
            found.append((f"data.{name}", f"carving {what} out of streamed shards needs random access to every "
                                          f"image; write the splits into the shards (transferkit shard ... --set "
                                          f"data.{name}=...) and remove data.{name}"))
    if d.kfold is not None:
        found.append(("data.kfold", "dealing the training images into folds needs random access to every image; "
                                    "write each fold's shards with transferkit shard, or cross-validate image files"))
    if d.sampler == "balanced":
        found.append(("data.sampler", "balanced draws images by class with replacement, which needs random access; "
                                      "streamed shards are read in order through a shuffle buffer: set data.sampler: "
                                      "random (or train.class_weights: auto)"))
    if d.cache in ("memory", "disk", "device"):
        found.append(("data.cache", f"{d.cache} keeps every decoded image, which streaming exists to avoid; "
                                    f"streamed images are decoded as they are read: set data.cache: auto or none"))
    if d.augment_on == "device":
        found.append(("data.augment_on", "device keeps every training image on the accelerator; streamed images are "
                                         "cropped in the loader: set data.augment_on: auto or cpu"))
    return found


def check_contradictions(spec: ExperimentSpec, where=lambda field: "") -> None:
    """SpecError for the first contradiction; `where(field)` gives the 'file line N: ' prefix."""
    for field, message in contradictions(spec):
        raise SpecError(f"{where(field)}{field}: {message}")


def selection_metric(spec: ExperimentSpec, has_val: bool, default: str = "accuracy") -> str | None:
    """The metric that picks best.pt and drives early stopping, resolved (`default`: the task's own metric);
    None: no selection (last epoch)."""
    chosen = spec.train.best_metric
    if chosen == "auto" and spec.train.early_stopping and spec.train.early_stopping.metric != "auto":
        chosen = spec.train.early_stopping.metric
    if chosen == "auto":
        return f"val_{default}" if has_val else None
    return chosen


def _where(source: str, text: str | None, path: tuple, overrides: list[str] | None) -> str:
    """'--set K=V: ' when an override put the value at `path` there, else '<file> line N: '."""
    culprit = override_for(path, overrides)
    return f"--set {culprit}: " if culprit is not None else f"{source}{yaml_line_of(text, path)}: "


def check_pretrained_weights(spec, source: str = "recipe", text: str | None = None,
                             overrides: list[str] | None = None) -> None:
    """Refuse `backbone.weights` set where `backbone.pretrained` is false: those weights would never load.

    A variant that only sets `pretrained: false` over a base with weights is the same network from random
    init, and is allowed; a variant (or base) that names weights and turns pretraining off is refused.
    """
    backbone = spec.backbone
    if not backbone.pretrained and backbone.weights:
        where = _where(source, text, ("backbone", "weights"), overrides)
        raise SpecError(f"{where}backbone.weights: '{backbone.weights}' is set but backbone.pretrained is false, "
                        f"so it would never be loaded (random init); remove backbone.weights or set "
                        f"backbone.pretrained: true")
    for name, override in spec.variants.items():
        own = override.get("backbone") if isinstance(override, dict) else None
        if not isinstance(own, dict) or not own.get("weights"):
            continue
        pretrained = own.get("pretrained", backbone.pretrained)
        if pretrained is False or (isinstance(pretrained, str) and pretrained.lower() in ("false", "no", "off")):
            path = ("variants", name, "backbone", "weights")
            where = _where(source, text, path, overrides)
            raise SpecError(f"{where}variants.{name}.backbone.weights: '{own['weights']}' is set but the variant's "
                            f"backbone.pretrained is false, so it would never be loaded; remove the weights or set "
                            f"pretrained: true in variants.{name}")


def check_recipe_contradictions(recipe: Recipe) -> None:
    """Phase 'contradictions': settings that contradict each other, in the recipe as written (weights that would
    never load), then in each variant's full spec, then the search space of `tune:`; SpecError on the first."""
    spec = recipe.spec
    check_pretrained_weights(spec, recipe.source, recipe.text, recipe.overrides)
    for name, variant in recipe.variants().items():
        check_contradictions(variant, lambda field, n=name: where_in_recipe(recipe.source, field, n,
                                                                               spec.base_variant))
    check_search_space(recipe)


def device_contradictions(spec: ExperimentSpec, device_type, processes: int = 1) -> list[tuple[str, str]]:
    """(field, message with the fix) for settings the device contradicts; `device_type()` ('cpu', 'cuda', 'mps')
    is asked only when a rule depends on it, so a recipe that needs no device answer resolves none."""
    found: list[tuple[str, str]] = []
    # torchvision's deterministic roi_align on CUDA falls back to a pure-Python version far too large to use.
    if spec.data.cache == "device" and spec.train.deterministic and device_type() == "cuda":
        found.append(("data.cache", "device cannot crop deterministically on CUDA; set data.cache: auto (the CPU "
                                    "crops) or train.deterministic: false"))
    if spec.train.sync_batchnorm and processes > 1 and device_type() != "cuda":
        found.append(("train.sync_batchnorm", f"PyTorch's SyncBatchNorm runs on CUDA only, and this run is on "
                                              f"{device_type()}; set train.sync_batchnorm: false"))
    return found
