"""The relative-path rule: a path written in a recipe file is relative to that file's folder; one given
with `--set` (or in a recipe passed as a dict) is relative to the working directory.

Only the fields that name local files or folders are touched: `data.root`, `data.labels`, the local paths among
`data.urls` (not a URL with a scheme), `train.init_from` and a `backbone.weights` that names a file (not a weights
name, timm tag or registered weight source), in the base and in each variant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
PATH_FIELDS = (("data", "root"), ("backbone", "weights"), ("data", "labels"), ("train", "init_from"))


def looks_like_weight_file(weights: Any) -> bool:
    """True when a `backbone.weights` value names a file: a weights suffix, a folder part, or a leading ~."""
    if not isinstance(weights, str) or not weights:
        return False
    return (Path(weights).suffix.lower() in WEIGHT_FILE_SUFFIXES or "/" in weights or os.sep in weights
            or weights.startswith("~"))


def absolute(value: str, base: Path) -> str:
    """`value` (~ expanded) made absolute against `base`, normalised; absolute values stay as they are."""
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() else Path(base).absolute() / path)


URL_FIELDS = ("train", "val", "test", "index")


def is_url(value: str) -> bool:
    """True for a URL with a scheme (http://, s3://, file://), which no folder makes relative."""
    return "://" in value


def _local_urls(value: Any, base: Path) -> Any:
    """A data.urls value (a string or a list) with its local paths made absolute against `base`."""
    if isinstance(value, str) and value and not is_url(value):
        return absolute(value, base)
    if isinstance(value, list):
        return [_local_urls(item, base) for item in value]
    return value


def _is_path_value(keys: tuple[str, ...], value: Any) -> bool:
    if keys in (("data", "root"), ("data", "labels"), ("train", "init_from")):
        return isinstance(value, str) and bool(value)
    return keys == ("backbone", "weights") and looks_like_weight_file(value)


def resolve_section_paths(section: Any, base: Path) -> Any:
    """A copy of one recipe mapping (the base recipe or one variant's overrides) with its paths made absolute."""
    if not isinstance(section, dict):
        return section
    result = dict(section)
    for keys in PATH_FIELDS:
        holder = result.get(keys[0])
        if isinstance(holder, dict) and _is_path_value(keys, holder.get(keys[1])):
            result[keys[0]] = {**holder, keys[1]: absolute(holder[keys[1]], base)}
    data = result.get("data")
    urls = data.get("urls") if isinstance(data, dict) else None
    if isinstance(urls, dict):
        data = result["data"] = {**data, "urls": {k: _local_urls(v, base) if k in URL_FIELDS else v
                                                  for k, v in urls.items()}}
    table = data.get("labels") if isinstance(data, dict) else None
    if isinstance(table, dict) and isinstance(table.get("file"), str) and table["file"]:  # labels: {file: ...}
        result["data"] = {**data, "labels": {**table, "file": absolute(table["file"], base)}}
    return result


def resolve_recipe_paths(raw: dict, base: Path) -> dict:
    """`raw` with data.root and backbone.weights files made absolute against `base`, variants included."""
    result = resolve_section_paths(raw, base)
    if isinstance(result.get("variants"), dict):
        result["variants"] = {name: resolve_section_paths(override, base)
                              for name, override in result["variants"].items()}
    return result


def resolve_override_paths(overrides: list[str], base: Path) -> list[str]:
    """`--set` texts with a relative data.root / backbone.weights file value made absolute against `base`."""
    import json

    import yaml

    resolved = []
    for text in overrides:
        key, sep, raw = text.partition("=")
        keys = tuple(part.strip() for part in key.strip().split("."))
        if keys[:1] == ("variants",) and len(keys) > 2:
            keys = keys[2:]
        try:
            value = yaml.safe_load(raw) if sep and raw.strip() else None
        except yaml.YAMLError:
            value = None
        if keys == ("data", "labels", "file"):
            keys = ("data", "labels")
        if sep and keys in PATH_FIELDS and _is_path_value(keys, value):
            text = f"{key}={json.dumps(absolute(value, base))}"  # a JSON string is a YAML scalar
        elif sep and len(keys) == 3 and keys[:2] == ("data", "urls") and keys[2] in URL_FIELDS:
            text = f"{key}={json.dumps(_local_urls(value, base))}"
        resolved.append(text)
    return resolved
