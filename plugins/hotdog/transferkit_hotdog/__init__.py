"""transferkit plugin: d2l's hot dog photos as the `hotdog` dataset, and the `hotdog-resnet18` recipe.

transferkit imports this module through the `transferkit.plugins` entry point (see pyproject.toml);
importing it registers both. Use them from a recipe (`data: {dataset: hotdog}`) or by name
(`transferkit run hotdog-resnet18`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from transferkit.data.folder import FolderSplits, split_folder
from transferkit.download import HOTDOG_SHA1, HOTDOG_URL, fetch_and_extract
from transferkit.errors import DataError
from transferkit.registry import DATASETS, RECIPES
from transferkit.recipe.spec import DataSpec

__version__ = "0.1.0"

PACKAGE = "transferkit-hotdog"
CLASSES = ["hotdog", "not-hotdog"]
RECIPE_FILE = Path(__file__).resolve().parent / "recipes" / "hotdog-resnet18.yaml"
OPTIONS = ("url", "sha1")
OFFLINE_HINT = ("or use an unzipped copy of hotdog.zip with --set data.root=/path/to/hotdog "
                "(the folder holding train/ and test/); the backbone weights work offline with "
                "--set backbone.weights=/path/resnet18-f37072fd.pth or a TORCH_HOME whose hub/checkpoints/ "
                "holds resnet18-f37072fd.pth")


def resolve_root(path: str | Path, train_dir: str = "train", test_dir: str = "test") -> Path:
    """The hotdog folder at `path`: `path` itself if it holds train/ and test/, else `path/hotdog`."""
    root = Path(path).expanduser()
    for candidate in (root, root / "hotdog"):
        if (candidate / train_dir).is_dir() and (candidate / test_dir).is_dir():
            return candidate
    raise DataError(f"data.root {root}: no {train_dir}/ and {test_dir}/ in it or in {root / 'hotdog'}; "
                    f"point it at the unzipped hotdog folder (or its parent), or unset it to download")


def download(options: dict) -> Path:
    """Download and extract hotdog.zip into the data cache once (hash-checked); the extracted folder.

    The cache is $TRANSFERKIT_DATA (default ~/.cache/transferkit); a second call needs no network.
    """
    url = str(options.get("url") or HOTDOG_URL)
    sha1 = str(options.get("sha1") or HOTDOG_SHA1).lower()
    if not re.fullmatch(r"[0-9a-f]{40}", sha1):
        raise DataError(f"data.options.sha1: {sha1!r} is not a SHA-1 (40 hex digits); give the archive's sha1sum")
    # Another archive (another sha1) gets a cache entry of its own, so it never reuses d2l's copy or vice versa.
    name = "hotdog" if sha1 == HOTDOG_SHA1 else f"hotdog-{sha1[:12]}"
    return resolve_root(fetch_and_extract(url, sha1, name, offline_hint=OFFLINE_HINT))


class HotdogOptions(BaseModel):
    """Where to download hotdog.zip from: `data.options` of the hotdog dataset."""

    model_config = ConfigDict(extra="forbid")

    url: Optional[str] = Field(None, description="archive URL (default: d2l's)")
    sha1: Optional[str] = Field(None, description="the archive's SHA-1, 40 hex digits (default: d2l's)")


@DATASETS.register("hotdog", origin=PACKAGE, options=HotdogOptions)
def hotdog(spec: DataSpec, seed: int = 0) -> FolderSplits:
    """d2l's hot dog photos: hotdog vs not-hotdog, 2,000 train / 800 test; downloaded on first use unless data.root is set."""
    unknown = sorted(set(spec.options) - set(OPTIONS))  # recipes refuse them when read; DataSpec built in code too
    if unknown:
        raise DataError(f"data.options: unknown key(s) {', '.join(unknown)} for dataset hotdog; "
                        f"it takes {' and '.join(OPTIONS)} (where to download hotdog.zip from)")
    root = resolve_root(spec.root, spec.train_dir, spec.test_dir) if spec.root else download(spec.options)
    splits = split_folder(root, spec.train_dir, spec.test_dir, spec.val_dir, spec.split_ratio, seed)
    if splits.classes != CLASSES:
        raise DataError(f"{root}: class folders are {splits.classes}, expected {CLASSES}; "
                        f"point data.root at d2l's hotdog folder, or use dataset 'folder' for other data")
    return splits


RECIPES.register("hotdog-resnet18", str(RECIPE_FILE), origin=PACKAGE)
