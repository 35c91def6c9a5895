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


def test_lr_find_suggests_from_the_longest_fall_and_says_when_the_curve_cannot_support_one(tmp_path):
    root = make_image_folder(tmp_path / "two", per_class=(16, 4))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(root, output_dir=str(tmp_path / "runs"))))
    result = run_cli("lr-find", str(recipe), "--steps", "100", "--output", str(tmp_path / "lr.png"),
                     "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("--set optimizer.lr=")
    suggested = float(result.stdout.strip().split("=")[1])
    assert 1e-5 <= suggested <= 1e-2, result.stdout  # "steep" said 4.4e-7 here; the loss falls until ~1e-2

    # LRs too small to move the weights: the curve is noise, and no --set line is offered; the probe runs first
    result = run_cli("lr-find", str(recipe), "--steps", "40", "--start-lr", "1e-9", "--end-lr", "1e-8",
                     "--set", "train.probe_epochs=2", "--output", str(tmp_path / "flat.png"), "--no-progress",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "lr-find: no suggestion: the loss is" in result.stderr, result.stderr
    assert "linear probe: head fitted" in result.stderr
    assert result.stderr.index("linear probe") < result.stderr.index("lr-find: 40 updates")
    assert (tmp_path / "flat.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "runs").exists()


def _smoothed(losses, beta=0.98):
    average, out = 0.0, []
    for i, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** (i + 1)))
    return out


def test_the_valley_rule_takes_the_middle_of_the_fall_and_refuses_pure_noise():
    import numpy as np

    from transferkit.run.lr_find import suggest

    rng = np.random.default_rng(0)
    lrs = list(np.geomspace(1e-7, 10, 200))
    log_lr = np.log10(lrs)
    # flat (noisy) to 1e-5, falling from 2.3 to 0.8 by 1e-2, diverging after 1e-1
    curve = 0.8 + 1.5 / (1 + np.exp(3 * (log_lr + 3.5))) + np.where(log_lr > -1, 10 ** (log_lr + 1) - 1, 0)
    losses = list(curve + rng.normal(0, 0.1, len(lrs)))
    result = suggest(lrs, losses, _smoothed(losses))
    # the smoothed curve lags the raw one (a 50-update running average): the middle of its fall is at ~3e-3
    assert result.warning is None and 1e-4 <= result.suggestion <= 1e-2, (result.suggestion, result.valley)

    noise = list(0.7 + rng.normal(0, 0.27, 200).clip(-0.6, None))
    result = suggest(lrs, noise, _smoothed(noise))
    assert result.suggestion is None and result.warning.startswith("the loss is noisy"), result.warning


def test_ctrl_c_in_fit_saves_prints_the_resume_command_and_exits_130_like_run(tmp_path):
    import shlex

    from test_resume import _run_with_fault

    root = make_image_folder(tmp_path / "photos", per_class=(12, 4), size=(40, 40))
    stopped = _run_with_fault(tmp_path, "SIGINT", 2, "fit", str(root), "--preset", "fast", "--set", "train.epochs=3",
                              "--set", "data.image_size=32", "--set", "train.device=cpu",
                              "--output", str(tmp_path / "runs"), "--no-progress")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    line = stopped.stderr.strip().splitlines()[-1].strip()
    assert line.startswith("transferkit run ") and "--resume" in line, stopped.stderr[-1500:]
    resumed = run_cli(*shlex.split(line)[1:], "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at" in resumed.stderr
    assert (tmp_path / "runs" / "photos-fast" / "fast" / "summary.json").is_file()


def test_the_python_api_keeps_long_lines_whole_off_a_terminal(tmp_path, capsys, monkeypatch):
    from transferkit.run.experiment import Experiment

    root = make_image_folder(tmp_path / "data", per_class=(2, 1), size=(8, 8))
    recipe = tiny_recipe(root, name="an-experiment-whose-name-is-long-enough-to-pass-eighty-columns",
                         output_dir=str(tmp_path / "runs"))
    monkeypatch.delenv("COLUMNS", raising=False)
    result = Experiment.from_dict(recipe).run(progress=False)
    lines = capsys.readouterr().err.splitlines()
    header = [line for line in lines if line.startswith("base: resnet18")]
    assert header and header[0].endswith(f"-> {result.run_root / 'base'}"), lines  # whole, not cut at 80 columns
    assert len(header[0]) > 80


def test_small_things_version_a_misspelt_recipe_and_every_changed_setting_named(tmp_path):
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("transferkit 0.")
    (tmp_path / "recipe.yml").write_text("name: x\n")
    missing = run_cli("validate", str(tmp_path / "recipe.yaml"))
    assert missing.returncode == 2 and f"did you mean: {tmp_path / 'recipe.yml'}?" in missing.stderr

    from transferkit.rundir import RunRoot  # noqa: F401  (the refusal lists each changed setting)
    root = make_image_folder(tmp_path / "data", per_class=(2, 1), size=(8, 8))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(root, output_dir=str(tmp_path / "runs"), train={"epochs": 1})))
    assert run_cli("run", str(recipe)).returncode == 0
    changed = run_cli("run", str(recipe), "--set", "optimizer.lr=0.5", "--set", "seed=3",
                      "--resume", str(tmp_path / "runs" / "tiny"))
    assert changed.returncode == 2
    assert "optimizer.lr: 0.01 in the run, 0.5 in the recipe" in changed.stderr and "seed:" in changed.stderr


def test_fit_splits_a_train_folder_without_test_and_tests_on_val_when_there_is_one(tmp_path):
    from transferkit.run.preset_rules import folder_layout, training_images

    root = make_image_folder(tmp_path / "photos", per_class=(10, 4), size=(16, 16))
    shutil.rmtree(root / "test")
    data = folder_layout(root)
    assert data["root"] == str((root / "train").resolve()) and data["split_ratio"] == 0.2
    assert training_images(data) == 14
    (root / "train").rename(root / "train-all")
    make_image_folder(tmp_path / "photos2", per_class=(10, 4), size=(16, 16))
    (tmp_path / "photos2" / "test").rename(tmp_path / "photos2" / "val")
    data = folder_layout(tmp_path / "photos2")
    assert data["test_dir"] == "val" and data["val_split"] == 0.1 and "split_ratio" not in data
    result = run_cli("fit", str(tmp_path / "photos2"), "--preset", "fast", "--set", "train.epochs=2",
                     "--set", "data.image_size=32", "--set", "train.device=cpu", "--output", str(tmp_path / "runs"),
                     "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_fit_sizes_its_schedule_from_the_images_a_limit_leaves(tmp_path):
    from transferkit.run.fit import fit_recipe

    root = make_image_folder(tmp_path / "photos", per_class=(600, 2), size=(8, 8))
    whole = fit_recipe(root, "balanced", device="cpu")
    assert whole["train"]["epochs"] == 3 and "1080 training images" in whole["description"]
    limited = fit_recipe(root, "balanced", device="cpu", overrides=["data.limit=200"])
    assert limited["train"]["epochs"] == 8 and "180 training images" in limited["description"]
    fast = fit_recipe(root, "best", device="cpu", overrides=["data.limit=200"])
    assert fast["train"]["ema"]["decay"] == round(min(0.9999, max(0.95, 1 - 3 / (16 * 6))), 4)  # from 180 images
    kept = fit_recipe(root, "balanced", device="cpu", overrides=["data.limit=200", "train.epochs=2"])
    assert kept["train"]["epochs"] == 2


def test_validate_prints_one_variant_or_only_what_each_variant_changes(tmp_path):
    recipe = tmp_path / "r.yaml"
    root = make_image_folder(tmp_path / "data", per_class=(2, 1), size=(8, 8))
    recipe.write_text(yaml.safe_dump(tiny_recipe(root, base_variant="finetune", variants={
        "scratch": {"optimizer": {"lr": 0.5}, "lr_policy": {"name": "uniform"}}})))
    full = run_cli("validate", str(recipe))
    one = run_cli("validate", str(recipe), "--variant", "scratch")
    assert one.returncode == 0 and yaml.safe_load(one.stdout).keys() == {"scratch"}
    assert len(one.stdout.splitlines()) < len(full.stdout.splitlines()) / 1.5
    diff = run_cli("validate", str(recipe), "--diff")
    assert diff.returncode == 0, diff.stderr
    tail = diff.stdout.split("scratch: 2 setting(s) changed from finetune\n")[1].splitlines()
    assert tail == ["  optimizer.lr: 0.01 -> 0.5", "  lr_policy.name: 'head_multiplier' -> 'uniform'"]
    unknown = run_cli("validate", str(recipe), "--variant", "scrach")
    assert unknown.returncode == 2 and "did you mean: scratch" in unknown.stderr
