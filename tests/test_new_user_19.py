"""Issue 19's new-user items: one-class folders, lr-find's suggestion, huge photos, TorchScript exports,
evaluating on a subset of classes, and the plugin template."""

from __future__ import annotations

import shutil

import yaml

from conftest import make_image_folder, run_cli, tiny_recipe

QUICK = ["--set", "data.image_size=32", "--set", "data.batch_size=8", "--set", "data.num_workers=0", "--no-progress"]


def test_a_one_class_folder_is_refused_naming_the_folder_that_holds_the_classes(tmp_path):
    inner = make_image_folder(tmp_path / "oneclass" / "photos", per_class=(6, 2))
    for split in ("train", "test"):  # oneclass/photos/{cat,dog}: the classes are one level down
        for name in ("cat", "dog"):
            shutil.move(str(inner / split / name), str(inner / name))
        (inner / split).rmdir()
    result = run_cli("fit", str(tmp_path / "oneclass"), "--preset", "fast", "--output", str(tmp_path / "runs"),
                     *QUICK, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "only one class folder (photos/)" in line and f"point data.root at {inner}" in line, result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.rglob("*.pt"))

    split_root = make_image_folder(tmp_path / "split", classes=("cat",), per_class=(4, 2))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(split_root)))
    result = run_cli("run", str(recipe), "--no-progress", cwd=tmp_path)
    assert result.returncode == 2 and f"{split_root / 'train'}: only one class folder (cat/)" in result.stderr, \
        result.stderr
