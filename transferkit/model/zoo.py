"""What torchvision and timm offer, by name, without importing them: model names, weights names and timm tags.

Importing torchvision (about 2.5 s here) or timm (about 3.5 s) only to learn that `resnet18` or
`timm/resnet18.a1_in1k` exists would make `transferkit validate` and `list-backbones` slow. The lists are
read once from the installed packages and kept in a JSON file under `$TRANSFERKIT_ZOO_CACHE` (default
`~/.cache/transferkit/zoo`), named by the package's installed version, so an upgrade rebuilds them. A folder
that cannot be written costs only the import, every time.
"""

from __future__ import annotations

import fnmatch
import json
import os
from functools import cache
from importlib import metadata
from pathlib import Path

from transferkit.files import atomic_write_text

_FORMAT = 1  # bumped when the kept lists change shape


def cache_dir() -> Path:
    """Where the lists are kept: $TRANSFERKIT_ZOO_CACHE, else ~/.cache/transferkit/zoo."""
    return Path(os.environ.get("TRANSFERKIT_ZOO_CACHE") or Path.home() / ".cache" / "transferkit" / "zoo").expanduser()


def _cached(package: str, build) -> dict:
    """`build()` for the installed version of `package`, read from the cache file when it is there."""
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        return build()  # not installed as a distribution: its import says what is wrong
    path = cache_dir() / f"{package}-{version}-lists{_FORMAT}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    lists = build()
    try:
        atomic_write_text(path, json.dumps(lists))
    except OSError:
        pass  # an unwritable cache folder: the lists are built again next time
    return lists


def _torchvision_lists() -> dict:
    import torchvision

    names = sorted(torchvision.models.list_models(module=torchvision.models))
    return {"weights": {name: [w.name for w in torchvision.models.get_model_weights(name)] for name in names}}


def _timm_lists() -> dict:
    import timm
    from timm.models import _registry

    every = sorted(getattr(_registry, "_model_entrypoints", None) or timm.list_models())  # deprecated names too
    return {"models": timm.list_models(), "pretrained": timm.list_pretrained(), "entrypoints": every}


@cache
def _torchvision() -> dict:
    return _cached("torchvision", _torchvision_lists)


@cache
def _timm() -> dict:
    return _cached("timm", _timm_lists)


def torchvision_models() -> list[str]:
    """Every torchvision classification model name, sorted."""
    return list(_torchvision()["weights"])


def torchvision_weights(name: str) -> list[str]:
    """The weights names (IMAGENET1K_V1, ...) of torchvision model `name`; [] for another name."""
    return list(_torchvision()["weights"].get(name, []))


def timm_models(pattern: str = "") -> list[str]:
    """timm's model names matching the shell-style `pattern` (all without one), as `timm.list_models` gives them."""
    names = _timm()["models"]
    return fnmatch.filter(names, pattern) if pattern else list(names)


def timm_pretrained(pattern: str = "") -> list[str]:
    """timm's pretrained `model.tag` names matching `pattern`, as `timm.list_pretrained` gives them (a pattern
    without a tag matches every tag of the names it matches)."""
    names = _timm()["pretrained"]
    if not pattern:
        return list(names)
    patterns = [pattern] if "." in pattern else [pattern, f"{pattern}.*"]
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]


def timm_is_model(name: str) -> bool:
    """True when timm has an architecture called `name` (a tag after the dot ignored), as `timm.is_model`."""
    return name.split(".")[0] in set(_timm()["entrypoints"])
