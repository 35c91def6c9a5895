"""Use what was trained: evaluate, predict and export a tiny trained model, through the CLI where it is the user's path."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, make_image_folder, run_cli, tiny_recipe

CLASSES = ("a", "b", "c", "d", "e")  # five, so top-5 accuracy is reported


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny run (5 classes, 32 px, one epoch), a folder to predict with odd and broken files, and its paths."""
    import transferkit

    base = tmp_path_factory.mktemp("use")
    data = make_image_folder(base / "data", classes=CLASSES, per_class=(6, 3))
    result = transferkit.Experiment.from_dict(tiny_recipe(data)).run(output_dir=base / "runs", progress=False)
    photos = base / "photos"
    shutil.copytree(data / "test", photos)
    source = next((photos / "a").glob("*.jpg"))
    Image.open(source).convert("L").save(photos / "a" / "gray.png")
    Image.open(source).convert("RGBA").save(photos / "b" / "rgba.png")
    Image.open(source).convert("CMYK").save(photos / "c" / "cmyk.jpg")
    gray16 = np.asarray(Image.open(source).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray16).save(photos / "d" / "sixteen-bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    Image.open(source).save(photos / "e" / "rotated.jpg", exif=exif)
    (photos / "d" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (photos / "e" / "truncated.jpg").write_bytes(source.read_bytes()[:200])
    return {"base": base, "data": data, "run_root": result.run_root, "variant": result.run_root / "base",
            "history": result["base"].history, "photos": photos}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_finished_run_evaluates_best_checkpoint(trained):
    out = trained["variant"] / "evaluation" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("confusion_matrix.png", "confusion_matrix.csv", "top_losses.png", "misclassified.csv",
                 "predictions.csv", "per_class.csv"):
        assert (out / name).stat().st_size > 0, name
    counts = np.array(metrics["confusion_matrix"])
    assert counts.sum() == metrics["images"] == len(CLASSES) * 3
    assert np.trace(counts) / counts.sum() == pytest.approx(metrics["top1_accuracy"])
    assert metrics["top1_accuracy"] == pytest.approx(trained["history"][-1]["test_accuracy"])
    assert metrics["loss"] == pytest.approx(trained["history"][-1]["test_loss"], rel=1e-4)
    assert "top5_accuracy" in metrics and [r["class"] for r in metrics["per_class"]] == list(CLASSES)
    assert metrics["weighted_avg"]["support"] == metrics["images"]
    wrong = read_csv(out / "misclassified.csv")
    assert len(wrong) == metrics["images"] - np.trace(counts)
    assert all(row["true_label"] != row["predicted_label"] for row in wrong)


def test_predict_writes_a_row_per_file_and_agrees_with_evaluate(trained, tmp_path):
    photos, preds = trained["photos"], tmp_path / "preds.csv"
    result = run_cli("predict", str(trained["run_root"]), str(photos), "--top-k", "5", "--output", str(preds))
    assert result.returncode == 1, result.stderr  # some inputs could not be read
    rows = read_csv(preds)
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    assert sorted(Path(r["path"]) for r in rows) == files
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"broken.jpg", "truncated.jpg"}
    assert "not an image" in errors["broken.jpg"] and "truncated" in errors["truncated.jpg"]
    for row in rows:
        if not row["error"]:
            assert sum(float(row[f"probability_{i}"]) for i in range(1, 6)) == pytest.approx(1.0, abs=1e-5)
            assert row["label"] == row["label_1"] and row["label"] in CLASSES
    assert "20 predicted, 2 unreadable" in result.stderr

    evaluated = tmp_path / "evaluation"
    result = run_cli("evaluate", str(trained["run_root"]), "--data", str(photos), "--output", str(evaluated))
    assert result.returncode == 0, result.stderr
    assert "weighted avg" in result.stdout and "unreadable, left out" in result.stderr
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["images"] == 20 and len(metrics["unreadable"]) == 2
    counts = np.array(metrics["confusion_matrix"])
    assert counts.sum() == 20 and np.trace(counts) / 20 == pytest.approx(metrics["top1_accuracy"])
    evaluated_labels = {r["path"]: r["predicted_label"] for r in read_csv(evaluated / "predictions.csv")}
    assert evaluated_labels == {r["path"]: r["label"] for r in rows if not r["error"]}

    from transferkit.errors import TransferkitError
    from transferkit.inference.predict_files import open_output

    with pytest.raises(TransferkitError, match="file exists; choose another name or add --overwrite"):
        with open_output(preds, overwrite=False):
            pass


def test_exported_onnx_agrees_and_predicts_without_the_checkpoint(trained, tmp_path):
    import transferkit
    from transferkit.inference.export import TOLERANCE

    onnx_file = tmp_path / "shipped" / "tiny.onnx"
    result = run_cli("export", str(trained["variant"]), "--format", "onnx", "--output", str(onnx_file))
    assert result.returncode == 0, result.stderr
    assert "checked on 15 test images" in result.stderr and onnx_file.is_file()

    torch_model, onnx_model = transferkit.load(trained["variant"]), transferkit.load(onnx_file)
    assert onnx_model.classes == list(CLASSES) and onnx_model.preprocessing == torch_model.preprocessing
    images = sorted(p for p in trained["photos"].rglob("*.jpg") if p.name not in ("broken.jpg", "truncated.jpg"))
    from transferkit.inference.predictor import softmax

    batch = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((32, 32)))).permute(2, 0, 1)
                         for p in images])
    difference = np.abs(softmax(onnx_model.logits(batch)) - softmax(torch_model.logits(batch))).max()
    assert difference <= TOLERANCE

    jsonl = tmp_path / "onnx.jsonl"
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in images) + "\n")
    result = run_cli("predict", str(onnx_file), str(listing), "--output", str(jsonl), "--top-k", "2")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["label"] for r in records] == [p.label for p in torch_model.predict(images)]
    assert all(len(r["top_k"]) == 2 and r["error"] is None for r in records)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load announces its deprecation
def test_exported_torchscript_agrees(trained, tmp_path):
    import transferkit
    from transferkit.inference.export import TOLERANCE, TORCHSCRIPT_METADATA

    predictor = transferkit.load(trained["variant"], device="cpu")
    result = predictor.export(tmp_path / "model.pt", format="torchscript", check=8)
    assert result.checked == 8 and result.max_probability_difference <= TOLERANCE
    extra = {TORCHSCRIPT_METADATA: ""}
    module = torch.jit.load(str(result.path), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra[TORCHSCRIPT_METADATA])
    assert json.loads(meta["transferkit.classes"]) == list(CLASSES)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    expected = predictor.logits(images)
    assert np.allclose(module(images.float()).detach().numpy(), expected, atol=1e-3)


def test_load_from_a_script(trained, tmp_path):
    photo = next((trained["photos"] / "b").glob("*.jpg"))
    script = tmp_path / "use_model.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from PIL import Image
        import transferkit

        model = transferkit.load({str(trained["variant"])!r})
        print("classes", ",".join(model.classes), model.preprocessing.input_size)
        from_path, from_pil, from_tensor = model.predict([{str(photo)!r}, Image.open({str(photo)!r}),
                                                          torch.full((3, 50, 60), 128, dtype=torch.uint8)], top_k=3)
        assert from_path.label == from_pil.label and len(from_tensor.top_k) == 3, (from_path, from_pil)
        result = model.evaluate({str(trained["data"])!r})
        print("top1", result.metrics["top1_accuracy"], "images", result.metrics["images"])
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(REPO),
                                               "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 0, result.stderr
    assert "classes a,b,c,d,e 32" in result.stdout and "images 15" in result.stdout


def test_evaluate_split_val_reads_a_valid_folder_as_training_does(trained, tmp_path):
    import transferkit

    data = tmp_path / "data"
    shutil.copytree(trained["data"] / "train", data / "train")
    shutil.copytree(trained["data"] / "test", data / "valid")  # the third spelling training accepts
    result = transferkit.load(trained["variant"], device="cpu").evaluate(data, split="val")
    assert result.metrics["data"] == str(data / "valid") and result.metrics["images"] == len(CLASSES) * 3


def test_class_mismatch_is_refused_with_the_difference(trained, tmp_path):
    other = make_image_folder(tmp_path / "other", classes=("a", "b", "c", "d", "zebra"), per_class=(1, 1))
    result = run_cli("evaluate", str(trained["variant"]), "--data", str(other))
    assert result.returncode == 2, result.stderr
    assert "only in the model: ['e']" in result.stderr and "only in the folder: ['zebra']" in result.stderr


def test_foreign_truncated_and_ambiguous_checkpoints_are_refused(trained, tmp_path):
    from transferkit.errors import TransferkitError
    from transferkit.inference.checkpoint_io import read_checkpoint

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    result = run_cli("predict", str(foreign), str(trained["photos"]))
    assert result.returncode == 2 and "not a transferkit checkpoint" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained["variant"] / "best.pt").read_bytes()[:5000])
    with pytest.raises(TransferkitError, match="truncated.pt: not a readable PyTorch file"):
        read_checkpoint(truncated)
    two = tmp_path / "two"
    for name in ("x", "y"):
        shutil.copytree(trained["variant"], two / name, ignore=shutil.ignore_patterns("*.onnx", "evaluation"))
    with pytest.raises(TransferkitError, match=r"holds 2 variants \(x, y\)"):
        read_checkpoint(two)


def test_checkpoint_saved_on_cuda_loads_on_cpu(trained, tmp_path):
    import transferkit

    state = torch.load(trained["variant"] / "best.pt", map_location="cpu", weights_only=True)

    def cuda_tag(storage):  # the storage location is the only device record in the file: tag it as a GPU run does
        return "cuda:0"

    entry = (0, cuda_tag, lambda storage, location: None)
    torch.serialization._package_registry.insert(0, entry)
    try:
        torch.save(state, tmp_path / "best.pt")
    finally:
        torch.serialization._package_registry.remove(entry)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "best.pt", weights_only=True)
    predictor = transferkit.load(tmp_path / "best.pt", device="cpu")
    assert next(predictor.model.parameters()).device.type == "cpu"
    photo = next((trained["photos"] / "a").glob("*.jpg"))
    assert predictor.predict(photo)[0].label == transferkit.load(trained["variant"], device="cpu").predict(photo)[0].label


def test_inputs_from_files_folders_lists_and_stdin(tmp_path):
    import io

    from transferkit.errors import DataError
    from transferkit.inference.inputs import collect_inputs

    folder = make_image_folder(tmp_path / "imgs", classes=("x",), per_class=(2, 0))
    (folder / "train" / "x" / ".hidden.jpg").write_bytes(b"")
    (folder / "train" / "x" / "notes.md").write_text("not an image")
    found = sorted((folder / "train" / "x").glob("x_*.jpg"))
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two files\n{found[1]}\n\n{found[0]}\n")
    stdin = io.StringIO(f"{found[0]}\n")
    paths = collect_inputs([str(folder), str(listing), "-", "missing.jpg"], stdin=stdin)
    assert paths == [*found, found[1], found[0], found[0], Path("missing.jpg")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        collect_inputs([str(tmp_path / "empty")])


def test_a_108_megapixel_photo_is_predicted_from_a_reduced_draft_and_the_limit_is_overridable(trained, tmp_path):
    photos = tmp_path / "phone"
    photos.mkdir()
    Image.new("RGB", (12000, 9000), (40, 60, 200)).save(photos / "huge.jpg", quality=50)  # 108 Mpx, ~1 MB
    shutil.copy(next((trained["photos"] / "a").glob("a_*.jpg")), photos / "small.jpg")
    preds = tmp_path / "preds.csv"
    result = run_cli("predict", str(trained["run_root"]), str(photos), "--output", str(preds))
    assert result.returncode == 0, result.stderr
    rows = {Path(r["path"]).name: r for r in read_csv(preds)}
    assert rows["huge.jpg"]["label"] in CLASSES and not rows["huge.jpg"]["error"], rows

    # the guard against bombs stays: an image decoding (after the 1/8 draft: 1500x1125) over the limit is refused
    result = run_cli("predict", str(trained["run_root"]), str(photos), "--output", str(preds), "--overwrite",
                     env={"TRANSFERKIT_MAX_IMAGE_PIXELS": "1000000"})
    assert result.returncode == 1, result.stderr
    rows = {Path(r["path"]).name: r for r in read_csv(preds)}
    assert "1500x1125 = 1687500 pixels to decode, over the limit of 1000000" in rows["huge.jpg"]["error"]
    assert "raise TRANSFERKIT_MAX_IMAGE_PIXELS" in rows["huge.jpg"]["error"] and not rows["small.jpg"]["error"]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace announces its deprecation
def test_the_torchscript_export_predicts_and_evaluates_like_its_checkpoint(trained, tmp_path):
    import transferkit

    scripted = tmp_path / "model.pt"
    result = run_cli("export", str(trained["variant"]), "--format", "torchscript", "--output", str(scripted))
    assert result.returncode == 0, result.stderr
    photos = make_image_folder(tmp_path / "clean", classes=CLASSES, per_class=(0, 2), seed=3) / "test"
    labels = {}
    for model in (trained["variant"], scripted):
        preds = tmp_path / f"{model.name}.csv"
        result = run_cli("predict", str(model), str(photos), "--output", str(preds))
        assert result.returncode == 0, result.stderr
        labels[model.name] = {r["path"]: (r["label"], round(float(r["probability"]), 4)) for r in read_csv(preds)}
    assert labels["model.pt"] == labels[trained["variant"].name] and len(labels["model.pt"]) == 10

    result = run_cli("evaluate", str(scripted), "--data", str(photos.parent), "--output", str(tmp_path / "ev"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["images"] == 10
    loaded = transferkit.load(scripted)
    assert loaded.classes == list(CLASSES) and type(loaded.predictor).__name__ == "TorchScriptPredictor"
    assert run_cli("export", str(scripted)).returncode == 2


def test_a_folder_with_some_of_the_models_classes_is_evaluated_naming_the_absent_ones(trained, tmp_path):
    subset = tmp_path / "subset"
    for name in ("a", "c"):
        shutil.copytree(trained["data"] / "test" / name, subset / name)
    result = run_cli("evaluate", str(trained["variant"]), "--data", str(subset), "--output", str(tmp_path / "ev"))
    assert result.returncode == 0, result.stderr
    assert "3 of the model's 5 classes absent (b, d, e); evaluated on the 2 present" in result.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["images"] == 6 and metrics["absent_classes"] == ["b", "d", "e"]
    rows = {row["class"]: row for row in metrics["per_class"]}
    assert [rows[name]["support"] for name in CLASSES] == [3, 0, 3, 0, 0]
    assert metrics["macro_avg"]["recall"] == pytest.approx((rows["a"]["recall"] + rows["c"]["recall"]) / 2)
    correct = sum(r["predicted_label"] == r["true_label"] for r in read_csv(tmp_path / "ev" / "predictions.csv"))
    assert metrics["top1_accuracy"] == pytest.approx(correct / 6)
