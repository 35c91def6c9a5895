"""Shared fixtures: tiny image folders built with PIL, and a helper to run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# One intra-op thread for torch here and in every CLI subprocess (they inherit os.environ): the models are
# tiny, and on a busy 2-core machine a second OpenMP thread spin-waits for its turn, costing far more CPU
# than it saves (measured in docs/testing.md). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported already by a pytest plugin: the variable came too late for it
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLOTHING = REPO.parent / "shared" / "data" / "clothing-small"


def make_image_folder(root: Path, classes=("cat", "dog"), per_class=(8, 4), size=(40, 48), seed=0) -> Path:
    """root/train/<class>/*.jpg and root/test/<class>/*.jpg; each class has its own colour so it is learnable."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array([40 + 170 * (index % 2), 60 + 60 * (index // 2 % 3), 200 - 150 * (index % 2)])
            for i in range(count):
                noise = rng.integers(-30, 30, size=(size[1], size[0], 3))
                pixels = np.clip(base + noise, 0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{name}_{i}.jpg", quality=90)
    return root


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """A two-class train/test folder of small JPEGs."""
    return make_image_folder(tmp_path / "data")


def tiny_recipe(root: Path, **overrides) -> dict:
    """A recipe dict training an untrained torchvision resnet18 for one epoch at 32 px."""
    from transferkit.recipe.merge import deep_merge

    recipe = {
        "name": "tiny",
        "seed": 0,
        "backbone": {"name": "resnet18", "pretrained": False},
        "data": {"dataset": "folder", "root": str(root), "image_size": 32, "batch_size": 8, "num_workers": 0},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.0},
        "train": {"epochs": 1, "device": "cpu"},
    }
    return deep_merge(recipe, overrides)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run `python -m transferkit.cli ARGS` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "transferkit.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
