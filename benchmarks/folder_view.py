"""A view of an image folder for the benchmarks: train/ and test/ as symbolic links to its files, without its
validation folder (so `fit` carves one), optionally a seeded subset of train/ and extra test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def folder_view(data: Path, target: Path, test_extra: int = 0, train_limit: int | None = None, seed: int = 0
                ) -> Path:
    """train/ and test/ of `data` as symbolic links to its files (no validation folder); `train_limit` keeps a
    seeded subset of train/, `test_extra` adds that many seeded validation-folder images to test/."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        files = sorted(p for p in (data / split).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if split == "train" and train_limit:
            files = [files[i] for i in sorted(rng.choice(len(files), train_limit, replace=False))]
        if split == "test" and test_extra:
            val = next(p for p in (data / "validation", data / "val", data / "valid") if p.is_dir())
            extra = sorted(p for p in val.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            files += [extra[i] for i in sorted(rng.choice(len(extra), test_extra, replace=False))]
        for file in files:
            link = target / split / file.parent.name / f"{file.parent.parent.name}-{file.name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(file)
    return target
