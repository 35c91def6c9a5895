"""Backbones: torchvision and timm models (and registered ones) as feature extractors with their preprocessing.

Naming rule: a bare name is a torchvision classification model (`resnet18`); `timm/<name>` is a
timm model, optionally with a pretrained tag (`timm/resnet18.a1_in1k`); a name registered in
BACKBONES (by a plugin or a script) wins over both.
"""

from __future__ import annotations

import fnmatch
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transferkit.errors import DownloadError, SpecError, WeightsError
from transferkit.model import zoo
from transferkit.model.preprocess import Preprocessing
from transferkit.registry import BACKBONES, WEIGHT_SOURCES, missing_note, suggest
from transferkit.recipe.paths import WEIGHT_FILE_SUFFIXES, looks_like_weight_file  # noqa: F401  (re-exported)
from transferkit.recipe.spec import BackboneSpec

if TYPE_CHECKING:  # torch, torchvision and timm are imported where a network is built or a file read: the
    from torch import nn  # name checks and listings use model/zoo.py and start without them

TIMM_PREFIX = "timm/"


@dataclass
class Backbone:
    """A network mapping normalised images (N, 3, H, W) to pooled features (N, num_features)."""

    module: nn.Module
    num_features: int
    preprocessing: Preprocessing
    name: str
    weights: str = "random init"

    @property
    def is_convolutional(self) -> bool:
        """True when convolutions dominate (so channels_last can pay), false for patch-embed transformers."""
        from torch import nn

        return sum(isinstance(m, nn.Conv2d) for m in self.module.modules()) > 2


def torchvision_names() -> list[str]:
    """Every torchvision classification model name."""
    return zoo.torchvision_models()


def list_backbones(pattern: str | None = None, source: str | None = None, pretrained: bool = False) -> list[str]:
    """Backbone names from the registry, torchvision and timm, filtered by wildcard, source and weights."""
    names: list[str] = []
    if source in (None, "registered"):
        names += BACKBONES.list()
    if source in (None, "torchvision"):
        names += torchvision_names()  # every torchvision classification model ships ImageNet weights
    if source in (None, "timm"):
        names += [TIMM_PREFIX + n for n in (zoo.timm_pretrained() if pretrained else zoo.timm_models())]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n.lower(), pattern.lower())
                 or fnmatch.fnmatch(n.lower(), TIMM_PREFIX + pattern.lower())]
    return names


def check_backbone(spec: BackboneSpec) -> None:
    """Cheap checks of a backbone spec before any training: the name exists, a torchvision weights name fits.

    SpecError naming backbone.name / backbone.weights and the fix; nothing is built or downloaded.
    """
    if spec.name in BACKBONES:
        return
    if spec.name.startswith(TIMM_PREFIX):
        arch = spec.name[len(TIMM_PREFIX):].split(".")[0]
        if not zoo.timm_is_model(arch):
            raise SpecError(f"backbone.name: timm has no model '{arch}'"
                            f"{suggest(arch, zoo.timm_models(arch[:3] + '*'))}; see `transferkit list-backbones 'timm/*'`")
        return
    if spec.name not in torchvision_names():
        _unknown_backbone(spec.name)
    weights = spec.weights
    if weights and weights != "DEFAULT" and not _is_weight_file(weights) and weights not in WEIGHT_SOURCES:
        choices = zoo.torchvision_weights(spec.name) + ["DEFAULT"]
        if weights not in choices:
            raise SpecError(f"backbone.weights: '{weights}' is not a weights name of {spec.name}"
                            f"{suggest(weights, choices)}; choose one of {', '.join(choices)} or give a .pth file")


def build_backbone(spec: BackboneSpec) -> Backbone:
    """Build the backbone a recipe names, with its weights loaded and its classifier removed."""
    if spec.name in BACKBONES:
        return BACKBONES.get(spec.name)(spec)
    if spec.name.startswith(TIMM_PREFIX):
        return _timm_backbone(spec)
    if spec.name in torchvision_names():
        return _torchvision_backbone(spec)
    _unknown_backbone(spec.name)


def _unknown_backbone(name: str):
    """Raise the SpecError for a backbone name that is neither registered, torchvision nor timm/."""
    hint = suggest(name, [*BACKBONES.list(), *torchvision_names()])
    if not hint:
        timm_hits = zoo.timm_models(name.split(".")[0])
        if timm_hits:
            hint = f" (did you mean: timm/{timm_hits[0]}?)"
    raise SpecError(f"backbone.name: unknown backbone '{name}'{missing_note()}{hint}; "
                    f"use a torchvision name, timm/<name>, or see `transferkit list-backbones`")


def is_weight_file(weights: str | None) -> bool:
    """True when `backbone.weights` names a local file (the recipe's rule, or an existing path)."""
    return bool(weights) and (looks_like_weight_file(weights) or Path(weights).expanduser().exists())


_is_weight_file = is_weight_file  # the name the training code imports


# --- torchvision -----------------------------------------------------------------------------------

def _torchvision_backbone(spec: BackboneSpec) -> Backbone:
    import torchvision

    weights_enum = torchvision.models.get_model_weights(spec.name)
    enum_value = None
    if spec.weights and not _is_weight_file(spec.weights) and spec.weights not in WEIGHT_SOURCES:
        try:
            enum_value = weights_enum[spec.weights]
        except KeyError:
            choices = [w.name for w in weights_enum] + ["DEFAULT"]
            if spec.weights == "DEFAULT":
                enum_value = weights_enum.DEFAULT
            else:
                raise SpecError(f"backbone.weights: '{spec.weights}' is not a weights name of {spec.name}"
                                f"{suggest(spec.weights, choices)}; choose one of {', '.join(choices)}") from None
    elif spec.pretrained and not spec.weights:
        enum_value = weights_enum.DEFAULT
    if not spec.pretrained and enum_value is not None:
        enum_value = None  # pretrained: false wins: the same network, random init

    kwargs = {}
    if spec.name in ("inception_v3", "googlenet") and (enum_value is not None or _is_weight_file(spec.weights)):
        kwargs = dict(transform_input=True, aux_logits=True, init_weights=False)
    model = torchvision.models.get_model(spec.name, weights=None, **kwargs)
    described = "random init"
    if enum_value is not None:
        model.load_state_dict(_download_torchvision_state(enum_value, spec.name))
        described = f"torchvision {enum_value}"
        transforms = enum_value.transforms()
        preprocessing = Preprocessing(
            input_size=int(transforms.crop_size[0]), resize_size=int(transforms.resize_size[0]),
            mean=tuple(transforms.mean), std=tuple(transforms.std),
            interpolation=transforms.interpolation.value)
    else:
        default = weights_enum.DEFAULT.transforms()
        preprocessing = Preprocessing(input_size=int(default.crop_size[0]), resize_size=int(default.resize_size[0]),
                                      mean=tuple(default.mean), std=tuple(default.std),
                                      interpolation=default.interpolation.value)
    num_features, classifier_prefix = _strip_torchvision_classifier(model)
    if spec.weights and spec.pretrained and _is_weight_file(spec.weights):
        _load_local(model, spec.weights, allowed_extra_prefixes=(classifier_prefix, "AuxLogits.", "aux1.", "aux2."))
        described = f"file {spec.weights}"
    elif spec.weights in WEIGHT_SOURCES and spec.pretrained:
        raise SpecError(f"backbone.weights: weight source '{spec.weights}' is for a timm model, not torchvision "
                        f"{spec.name}; see `transferkit list-backbones --pretrained`")
    return Backbone(model, num_features, preprocessing, spec.name, described)


def _download_torchvision_state(enum_value, name: str) -> dict:
    """Torchvision's own loading path (its TORCH_HOME cache), with weights_only=True."""
    url = enum_value.url
    filename = url.rsplit("/", 1)[-1]
    try:
        return enum_value.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "hash" not in str(exc).lower():
            raise
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"could not download {name} weights from {url} ({reason}); to run offline use "
            f"--set backbone.weights=/path/to/{filename}, or put that file in $TORCH_HOME/hub/checkpoints/") from None


def _strip_torchvision_classifier(model: nn.Module) -> tuple[int, str]:
    """Replace the model's last Linear (its classifier) by Identity; (feature width, classifier key prefix)."""
    from torch import nn

    if hasattr(model, "aux_logits"):
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)
    if type(model).__name__ == "SqueezeNet":  # its classifier is a 1x1 convolution, not a Linear
        final_conv = model.classifier[1]
        model.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return final_conv.in_channels, "classifier."
    last_name, last = None, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = name, module
    if last is None:
        raise SpecError(f"backbone: {type(model).__name__} has no Linear classifier to replace")
    parent = model.get_submodule(last_name.rsplit(".", 1)[0]) if "." in last_name else model
    setattr(parent, last_name.rsplit(".", 1)[-1], nn.Identity())
    return last.in_features, last_name + "."


# --- timm ------------------------------------------------------------------------------------------

def _timm_backbone(spec: BackboneSpec) -> Backbone:
    import timm

    model_name = spec.name[len(TIMM_PREFIX):]
    arch = model_name.split(".")[0]
    if not timm.is_model(arch):
        raise SpecError(f"backbone.name: timm has no model '{arch}'"
                        f"{suggest(arch, timm.list_models(arch[:3] + '*'))}; see `transferkit list-backbones 'timm/*'`")
    source = spec.weights if spec.weights in WEIGHT_SOURCES else None
    weight_file = spec.weights if spec.weights and not source and _is_weight_file(spec.weights) else None
    if spec.weights and not source and not weight_file:
        model_name = f"{arch}.{spec.weights}"  # a timm pretrained tag
    use_hub = spec.pretrained and not source and not weight_file
    try:
        model = timm.create_model(model_name, pretrained=use_hub, num_classes=0)
    except RuntimeError as exc:
        if "Unknown pretrained tag" in str(exc) or "No pretrained weights" in str(exc):
            raise SpecError(f"backbone.weights: {exc}; see `transferkit list-backbones 'timm/{arch}*' --pretrained`") from None
        raise
    except (OSError, urllib.error.URLError) as exc:
        raise DownloadError(
            f"could not download timm weights for {model_name} ({type(exc).__name__}); to run offline use "
            f"--set backbone.weights=/path/to/weights.safetensors, or pre-fill the Hugging Face cache (HF_HOME)") from None
    config = timm.data.resolve_data_config({}, model=model)
    preprocessing = Preprocessing(
        input_size=int(config["input_size"][-1]),
        resize_size=int(round(config["input_size"][-1] / config.get("crop_pct", 0.875))),
        mean=tuple(config["mean"]), std=tuple(config["std"]), interpolation=config.get("interpolation", "bilinear"))
    described = f"timm {model_name}" if use_hub else "random init"
    classifier_name = (model.pretrained_cfg or {}).get("classifier", "classifier")
    allowed = (classifier_name + ".", "head.fc.", "fc.", "classifier.")
    if source and spec.pretrained:
        state, source_prep = WEIGHT_SOURCES.get(source)(arch)
        _load_state(model, state, allowed, origin=source)
        preprocessing, described = source_prep, f"weight source {source}"
    elif weight_file and spec.pretrained:
        _load_local(model, weight_file, allowed)
        described = f"file {weight_file}"
    # with num_classes=0 timm returns pre-logits features: wider than num_features where a head conv sits between
    # (MobileNetV3: 288 pooled, 1024 after conv_head)
    width = getattr(model, "head_hidden_size", None) or model.num_features
    return Backbone(model, int(width), preprocessing, spec.name, described)


# --- local files -----------------------------------------------------------------------------------

def _load_local(model: nn.Module, path: str, allowed_extra_prefixes: tuple[str, ...]) -> None:
    """Load the recipe's backbone.weights file; its errors name that field."""
    from transferkit.model.weights_io import load_weights_file

    try:
        state = load_weights_file(path)
        _load_state(model, state, allowed_extra_prefixes, origin=path)
    except WeightsError as exc:
        raise WeightsError(f"backbone.weights: {exc}") from None


def _load_state(model: nn.Module, state: dict, allowed_extra_prefixes: tuple[str, ...], origin: str) -> None:
    """Load `state` into `model`: every model tensor must be present; extras only under the classifier."""
    if any(k.startswith("backbone.") for k in state):  # a transferkit checkpoint's model state
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    expected = check_state_fits(model, state, allowed_extra_prefixes, origin)
    model.load_state_dict({k: state[k] for k in expected}, strict=True)


def check_state_fits(model: nn.Module, state: dict, allowed_extra_prefixes: tuple[str, ...], origin: str) -> dict:
    """WeightsError unless `state` has every tensor of `model` in its shape (extras only under the classifier).

    Works on a model built on the meta device, so a recipe's weights file is checked before anything trains.
    Returns the model's own state dict.
    """
    if any(k.startswith("backbone.") for k in state):  # a transferkit checkpoint's model state
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected and not k.startswith(allowed_extra_prefixes)]
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise WeightsError(f"{origin}: weights do not fit this backbone ({detail}, "
                           f"{len(missing)} missing, {len(extra)} unexpected); check backbone.name matches the file")
    mismatched = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if mismatched:
        k = mismatched[0]
        raise WeightsError(f"{origin}: tensor {k} has shape {tuple(state[k].shape)}, the model expects "
                           f"{tuple(expected[k].shape)}; check backbone.name matches the file")
    return expected


def _meta_architecture(spec: BackboneSpec) -> tuple[nn.Module, tuple[str, ...]]:
    """The backbone's network without weights, on the meta device (no memory, no download), and the key
    prefixes a weights file may carry beyond it (its classifier)."""
    import torch

    with torch.device("meta"):
        if spec.name.startswith(TIMM_PREFIX):
            import timm

            model = timm.create_model(spec.name[len(TIMM_PREFIX):].split(".")[0], pretrained=False, num_classes=0)
            classifier = (model.pretrained_cfg or {}).get("classifier", "classifier")
            return model, (classifier + ".", "head.fc.", "fc.", "classifier.")
        import torchvision

        kwargs = dict(transform_input=True, aux_logits=True, init_weights=False) \
            if spec.name in ("inception_v3", "googlenet") else {}
        model = torchvision.models.get_model(spec.name, weights=None, **kwargs)
        _, prefix = _strip_torchvision_classifier(model)
        return model, (prefix, "AuxLogits.", "aux1.", "aux2.")


def check_weights_fit(spec: BackboneSpec) -> None:
    """Before training: the weights the recipe names fit its architecture; nothing is downloaded or trained.

    A local file is read and compared, tensor by tensor, with the network built on the meta device; a
    registered weight source must be installed and made for this architecture; a timm tag must exist.
    WeightsError or SpecError naming backbone.weights and the fix.
    """
    if not spec.pretrained or spec.name in BACKBONES:
        return
    weights = spec.weights
    timm_model = spec.name.startswith(TIMM_PREFIX)
    if weights and weights in WEIGHT_SOURCES:
        source = WEIGHT_SOURCES.get(weights)
        fits = getattr(source, "architecture", None)
        arch = spec.name.split(".")[0]
        if not timm_model and fits is None:
            raise SpecError(f"backbone.weights: weight source '{weights}' is for a timm model, not torchvision "
                            f"{spec.name}; see `transferkit list-weights`")
        if fits is not None and fits != arch:
            raise SpecError(f"backbone.weights: weight source '{weights}' fits {fits}, not {arch}; "
                            f"set backbone.name: {fits} or choose other weights (`transferkit list-weights {arch}`)")
        installed = getattr(source, "is_installed", None)
        if callable(installed) and not installed():
            hint = getattr(source, "install_hint", "install the package that provides it")
            raise WeightsError(f"backbone.weights: weight source '{weights}' is not installed; {hint}")
        return
    if weights and is_weight_file(weights):
        path = Path(weights).expanduser()
        if path.is_file():
            from transferkit.model.weights_io import load_weights_file

            model, allowed = _meta_architecture(spec)
            try:
                check_state_fits(model, load_weights_file(path), allowed, origin=str(path))
            except WeightsError as exc:
                raise WeightsError(f"backbone.weights: {exc}") from None
        return
    if timm_model:
        name = spec.name[len(TIMM_PREFIX):]
        arch = name.split(".")[0]
        tagged = f"{arch}.{weights}" if weights else name
        wanted = tagged if "." in tagged else f"{arch}.*"
        if not zoo.timm_pretrained(wanted):
            tags = [n.split(".", 1)[-1] for n in zoo.timm_pretrained(f"{arch}.*")]
            fix = (f"choose one of {', '.join(tags[:8])}" if tags else "set backbone.pretrained: false")
            raise SpecError(f"backbone.weights: timm has no pretrained weights '{tagged}'"
                            f"{suggest(tagged.split('.', 1)[-1], tags)}; {fix} "
                            f"(see `transferkit list-weights timm/{arch}`)")



# --- listing weights -------------------------------------------------------------------------------

def torchvision_weight_names(name: str) -> list[str]:
    """The torchvision weights names of model `name` (IMAGENET1K_V1, ...), [] for other names."""
    if name.startswith(TIMM_PREFIX) or name in BACKBONES or name not in torchvision_names():
        return []
    return zoo.torchvision_weights(name)


def weight_sources_for(pattern: str | None = None, installed_only: bool = False) -> list[tuple[str, str]]:
    """(architecture, weight source) for each registered source whose architecture matches `pattern`."""
    found = []
    for name in WEIGHT_SOURCES.list():
        source = WEIGHT_SOURCES.get(name)
        arch = getattr(source, "architecture", None)
        installed = getattr(source, "is_installed", None)
        if installed_only and callable(installed) and not installed():
            continue
        if pattern and not (arch and (fnmatch.fnmatch(arch.lower(), pattern.lower())
                                      or fnmatch.fnmatch(arch.lower(), TIMM_PREFIX + pattern.lower()))):
            continue
        found.append((arch or "?", name))
    return found


def weights_for(backbone: str) -> list[list[str]]:
    """[weights, kind, description] for each weights backbone `backbone` can load."""
    rows: list[list[str]] = []
    if backbone.startswith(TIMM_PREFIX):
        import timm

        arch = backbone[len(TIMM_PREFIX):].split(".")[0]
        if not timm.is_model(arch):
            raise SpecError(f"{backbone}: timm has no model '{arch}'{suggest(arch, timm.list_models(arch[:3] + '*'))}")
        rows += [[tag.split(".", 1)[1], "timm tag", f"timm/{tag}"] for tag in timm.list_pretrained(f"{arch}.*")]
    elif backbone not in BACKBONES:
        if backbone not in torchvision_names():
            _unknown_backbone(backbone)
        import torchvision

        for w in torchvision.models.get_model_weights(backbone):
            top1 = (w.meta.get("_metrics", {}).get("ImageNet-1K", {}) or {}).get("acc@1")
            rows.append([w.name, "torchvision", f"ImageNet-1K top-1 {top1}%" if top1 else ""])
        if rows:
            rows.append(["DEFAULT", "torchvision", "the best of the above (what pretrained: true loads)"])
    for arch, name in weight_sources_for(backbone.split(".")[0]):
        source = WEIGHT_SOURCES.get(name)
        installed = getattr(source, "is_installed", None)
        state = "" if not callable(installed) else (" (installed)" if installed() else " (not installed)")
        rows.append([name, "weight source" + state, WEIGHT_SOURCES.describe(name)])
    return rows
