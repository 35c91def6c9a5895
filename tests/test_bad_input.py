"""Malformed recipes and bad inputs: each one is a TransferkitError with ONE line naming the field, the
recipe line where the file is at fault, and the fix; nothing crashes with a traceback, no pickle runs code.

Most cases go through the Python API in-process (fast); a handful go through the CLI in a subprocess to
check exit code 2 and a single stderr line.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_image_folder, run_cli, tiny_recipe
from transferkit import Experiment
from transferkit.errors import DataError, DeviceError, SpecError, TransferkitError, WeightsError


def one_line(exc: BaseException) -> str:
    """The error's message, checked to be a single non-empty line."""
    message = str(exc)
    assert message.strip() and "\n" not in message and "\r" not in message, repr(message)
    return message


def assert_parts(message: str, parts) -> None:
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# --- recipe files that fail when read and validated (load_recipe + registry checks) ------------------

# (recipe text, --set overrides, parts the one-line message must hold); 'line N' where the file is at fault.
LOAD_CASES = [
    pytest.param("name: x\ntrain:\n\tepochs: 3\n", [],
                 ["line 3", "YAML syntax error", "indentation"], id="yaml-syntax-tab"),
    pytest.param("name: x\ndata:\n  mean: [0.5, 0.5, 0.5\n  std: [0.2, 0.2, 0.2]\n", [],
                 ["line 4", "YAML syntax error", "fix the recipe"], id="yaml-syntax-unclosed-bracket"),
    pytest.param("just a sentence, not keys\n", [],
                 ["top level must be a mapping", "not a string"], id="top-level-string"),
    pytest.param("42\n", [], ["top level must be a mapping", "not a number"], id="top-level-number"),
    pytest.param("name: x\noptimiser:\n  lr: 0.1\n", [],
                 ["line 2", "optimiser", "unknown key", "did you mean optimizer"], id="unknown-top-key"),
    pytest.param("name: x\ndata:\n  batchsize: 8\n", [],
                 ["line 3", "data.batchsize", "did you mean batch_size"], id="unknown-nested-key"),
    pytest.param("name: x\ntrain:\n  epochs: five\n", [],
                 ["line 3", "train.epochs", "valid integer", "'five'"], id="epochs-not-a-number"),
    pytest.param("data:\n  batch_size: [1]\n", [],
                 ["line 2", "data.batch_size", "valid integer", "got [1]"], id="batch-size-list"),
    pytest.param("optimizer:\n  name: sgd\n  lr: 0\n", [],
                 ["line 3", "optimizer.lr", "greater than 0", "got 0"], id="lr-zero"),
    pytest.param("name: x\nvariants:\n  hot:\n    optimizer: {lr: -0.1}\n", [],
                 ["line 4", "variants.hot.optimizer.lr", "greater than 0"], id="lr-negative-in-variant"),
    pytest.param("name: x\ntrain:\n  device: cpu\n  epochs: 0\n", [],
                 ["line 4", "train.epochs", "greater than 0", "got 0"], id="epochs-zero"),
    pytest.param("name: x\nbackbone:\n  name: resnet19\n", [],
                 ["line 3", "backbone.name", "unknown backbone 'resnet19'", "did you mean: resnet18",
                  "list-backbones"], id="unknown-backbone"),
    pytest.param("backbone:\n  name: timm/resnet1888\n", [],
                 ["line 2", "backbone.name", "timm has no model 'resnet1888'", "did you mean: resnet18"],
                 id="unknown-timm-backbone"),
    pytest.param("backbone:\n  name: resnet18\n  weights: IMAGENET2K\n", [],
                 ["line 3", "backbone.weights", "did you mean: IMAGENET1K_V1", "choose one of"],
                 id="unknown-torchvision-weights-name"),
    pytest.param("name: x\nhead:\n  name: mpl\n", [],
                 ["line 3", "head.name", "unknown head 'mpl'", "did you mean: mlp", "list-heads"], id="unknown-head"),
    pytest.param("data:\n  dataset: foldr\n", [],
                 ["line 2", "data.dataset", "did you mean: folder", "list-datasets"], id="unknown-dataset"),
    pytest.param("lr_policy:\n  name: layerwise\n", [],
                 ["line 2", "lr_policy.name", "unknown LR policy", "did you mean: layerwise_decay"],
                 id="unknown-lr-policy"),
    pytest.param("optimizer:\n  name: adamww\n", [],
                 ["line 2", "optimizer.name", "unknown optimizer 'adamww'", "did you mean: adamw"],
                 id="unknown-optimizer"),
    pytest.param("name: x\nschedule:\n  name: cosin\n", [],
                 ["line 3", "schedule.name", "'constant', 'step', 'cosine' or 'onecycle'", "did you mean: cosine"],
                 id="unknown-schedule"),
    pytest.param("name: x\nvariants:\n  scratch:\n    head: {name: linaer}\n", [],
                 ["line 4", "variant scratch", "head.name", "did you mean: linear"], id="unknown-head-in-variant"),
    pytest.param("backbone:\n  name: resnet18\n  weights: no/such/dir/resnet18.pth\n", [],
                 ["line 3", "backbone.weights", "not found", ".pth/.pt/.safetensors"], id="weights-file-missing"),
    pytest.param("data:\n  image_size: 0\n", [],
                 ["line 2", "data.image_size", "greater than 0", "got 0"], id="image-size-zero"),
    pytest.param("data:\n  resize_size: -32\n", [],
                 ["line 2", "data.resize_size", "greater than 0"], id="resize-size-negative"),
    pytest.param("name: x\nvariants:\n  fast:\n    trian: {epochs: 1}\n", [],
                 ["line 4", "variants.fast.trian", "did you mean train"], id="variant-unknown-key"),
    pytest.param("name: x\nbase_variant: finetune\nvariants:\n  finetune: {train: {epochs: 1}}\n", [],
                 ["line 4", "variants.finetune", "clashes with base_variant", "rename"], id="variant-name-clash"),
    pytest.param("name: x\nvariants:\n  a:\n    variants: {b: {}}\n", [],
                 ["line 4", "variants.a.variants", "may not set 'variants'", "remove"], id="variant-sets-variants"),
    pytest.param("name: x\nvariants:\n  a:\n    base_variant: other\n", [],
                 ["line 4", "variants.a.base_variant", "may not set 'base_variant'"], id="variant-sets-base-variant"),
    pytest.param("name: x\nvariants:\n  - scratch\n  - probe\n", [],
                 ["line 2", "variants", "valid dictionary"], id="variants-as-list"),
    pytest.param("name: x\ndata:\n  batch_size: 8\n  num_workers: 0\n  batch_size: 16\n", [],
                 ["line 5", "batch_size", "appears twice", "keep one"], id="duplicate-nested-key"),
    pytest.param("train:\n  device: tpu\n", [],
                 ["line 2", "train.device", "use auto, cpu, cuda, cuda:N or mps", "'tpu'"], id="device-tpu"),
    pytest.param("train:\n  precision: fp8\n", [],
                 ["line 2", "train.precision", "'fp16'", "got 'fp8'"], id="precision-unknown"),
    pytest.param("head:\n  name: mlp\n  dropout: 1.0\n", [],
                 ["line 3", "head.dropout", "less than 1", "got 1.0"], id="head-dropout-one"),
    pytest.param("data:\n  split_ratio: 1.5\n", [],
                 ["line 2", "data.split_ratio", "less than 1", "got 1.5"], id="split-ratio-above-1"),
    pytest.param("data:\n  split_ratio: 0\n", [],
                 ["line 2", "data.split_ratio", "greater than 0"], id="split-ratio-zero"),
    pytest.param("data:\n  mean: [0.5, 0.5]\n", [],
                 ["line 2", "data.mean", "exactly 3 values", "got [0.5, 0.5]"], id="mean-two-values"),
    pytest.param("data:\n  std: 0.2\n", [],
                 ["line 2", "data.std", "exactly 3 values"], id="std-scalar"),
    pytest.param("name: my run/1\n", [],
                 ["line 1", "name", "letters, digits", "'my run/1'"], id="name-with-slash"),
    pytest.param("name: x\ntrain: 5\n", [],
                 ["line 2", "train", "valid dictionary"], id="section-not-a-mapping"),
    pytest.param("data:\n  hflip: maybe\n", [],
                 ["line 2", "data.hflip", "valid boolean"], id="bool-garbage"),
    pytest.param("name: x\n", ["train.epochs"],
                 ["--set 'train.epochs'", "expected KEY=VALUE"], id="set-without-equals"),
    pytest.param("name: x\n", ["train..epochs=3"],
                 ["--set 'train..epochs=3'", "empty key part"], id="set-empty-key-part"),
    pytest.param("name: x\ntrain:\n  epochs: 2\n", ["train.epochz=3"],
                 ["--set train.epochz=3", "train.epochz", "did you mean epochs"], id="set-unknown-key"),
    pytest.param("name: x\noptimizer:\n  lr: 0.1\n", ["optimizer.lr=-1"],
                 ["--set optimizer.lr=-1", "optimizer.lr", "greater than 0"], id="set-bad-value"),
]


@pytest.mark.parametrize("text, overrides, parts", LOAD_CASES)
def test_bad_recipe_is_one_clear_line(tmp_path, text, overrides, parts):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(TransferkitError) as info:
        Experiment.from_yaml(path, overrides)
    message = one_line(info.value)
    assert_parts(message, parts)
    if any(p.startswith("--set ") for p in parts):
        assert " line " not in message, "a --set problem must not blame a line of the file"


def test_set_fixing_a_bad_file_value_is_accepted(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ndata: {root: .}\ntrain:\n  epochs: 0\n")
    assert Experiment.from_yaml(path, ["train.epochs=2"]).spec.train.epochs == 2


# --- recipes that are valid YAML but fail when run (data, weights, device, output) --------------------

def _empty_class(root: Path) -> dict:
    for image in (root / "train" / "cat").iterdir():
        image.unlink()
    return {}


def _classes_differ(root: Path) -> dict:
    (root / "test" / "dog").rename(root / "test" / "bird")
    return {}


def _output_dir_is_a_file(root: Path) -> dict:
    blocker = root.parent / "a_file"
    blocker.write_text("a file where the output directory should be")
    return {"output_dir": str(blocker)}


def _weights(root: Path, name: str, content) -> dict:
    path = root.parent / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return {"backbone": {"name": "resnet18", "pretrained": True, "weights": str(path)}}


RUN_CASES = [
    pytest.param(lambda root: {"data": {"root": str(root.parent / "nowhere")}}, DataError,
                 ["data.root", "nowhere", "not found"], id="data-root-missing"),
    pytest.param(lambda root: {"data": {"root": None}}, DataError,
                 ["data.root: not set", "point it at a folder"], id="data-root-unset"),
    pytest.param(_empty_class, DataError,
                 ["train/cat", "class folder has no images", "add images or remove the folder"], id="class-folder-empty"),
    pytest.param(_classes_differ, DataError,
                 ["classes differ", "only in train: ['dog']", "only in test: ['bird']", "same class folders"],
                 id="classes-differ-train-test"),
    pytest.param(lambda root: {"data": {"split_ratio": 0.2}}, DataError,
                 ["data.split_ratio", "already holds train/ and test/", "remove data.split_ratio"],
                 id="split-ratio-on-train-test-layout"),
    pytest.param(lambda root: _weights(root, "list.pth", [1, 2, 3]), WeightsError,
                 ["backbone.weights", "list.pth", "not a state dict", "torch.save(model.state_dict(), path)"],
                 id="weights-list-not-state-dict"),
    pytest.param(lambda root: _weights(root, "notes.pth", b"these are my notes, not weights\n"), WeightsError,
                 ["backbone.weights", "notes.pth", "not a PyTorch weights file", "re-save"], id="weights-text-file"),
    pytest.param(lambda root: _weights(root, "empty.pth", b""), WeightsError,
                 ["backbone.weights", "empty.pth", "empty (0 bytes)"], id="weights-empty-file"),
    pytest.param(lambda root: _weights(root, "other.pth", {"layer.weight": torch.zeros(2)}), WeightsError,
                 ["backbone.weights", "other.pth", "do not fit this backbone", "check backbone.name"],
                 id="weights-for-another-model"),
    pytest.param(lambda root: {"train": {"device": "cuda:3"}}, DeviceError,
                 ["train.device", "'cuda:3'", "use --device cpu or auto"], id="device-cuda3-absent",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
    pytest.param(lambda root: {"train": {"precision": "fp16"}}, DeviceError,
                 ["train.precision", "fp16", "not supported on CPU", "use bf16 or fp32"], id="precision-fp16-on-cpu"),
    pytest.param(_output_dir_is_a_file, TransferkitError, ["output_dir", "a_file", "not a writable directory", "--output DIR"],
                 id="output-dir-is-a-file"),
]


@pytest.mark.parametrize("setup, error_type, parts", RUN_CASES)
def test_run_time_failure_is_one_clear_line(tmp_path, setup, error_type, parts):
    root = make_image_folder(tmp_path / "data", per_class=(2, 1), size=(8, 8))
    raw = tiny_recipe(root, output_dir=str(tmp_path / "runs"))
    from transferkit.recipe.merge import deep_merge

    raw = deep_merge(raw, setup(root))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(error_type) as info:
        Experiment.from_yaml(path).run(progress=False)
    assert_parts(one_line(info.value), parts)


def test_unknown_variant_requested_from_the_api(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ndata: {root: .}\nvariants:\n  scratch: {backbone: {pretrained: false}}\n")
    experiment = Experiment.from_yaml(path)
    with pytest.raises(SpecError) as info:
        experiment.run(variants=["bsae"], output_dir=tmp_path / "runs", progress=False)
    assert_parts(one_line(info.value), ["unknown variant 'bsae'", "did you mean: base", "variants are: base, scratch"])
    assert not (tmp_path / "runs").exists()


# --- a pickle that would run code when loaded ------------------------------------------------------

def write_marker(path):  # a plain function: a pickle that names it would call it on load
    Path(path).write_text("the pickle ran code")
    return {}


class ShellOnLoad:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class FunctionOnLoad(ShellOnLoad):
    def __reduce__(self):
        return (write_marker, (str(self.marker),))


def _save_torch(obj, path):
    torch.save({"conv1.weight": obj}, path)


def _save_pickle(obj, path):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


@pytest.mark.parametrize("payload, save", [
    pytest.param(ShellOnLoad, _save_torch, id="os.system-via-torch.save"),
    pytest.param(ShellOnLoad, _save_pickle, id="os.system-via-pickle.dump"),
    pytest.param(FunctionOnLoad, _save_torch, id="marker-function-via-torch.save"),
])
def test_code_running_pickle_as_weights_is_refused_and_never_runs(tmp_path, payload, save):
    root = make_image_folder(tmp_path / "data", per_class=(2, 1), size=(8, 8))
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pth"
    save(payload(marker), evil)
    raw = tiny_recipe(root, backbone={"name": "resnet18", "pretrained": True, "weights": str(evil)},
                      output_dir=str(tmp_path / "runs"))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))

    with pytest.raises(WeightsError) as info:
        Experiment.from_yaml(path).run(progress=False)
    assert_parts(one_line(info.value), ["backbone.weights", "evil.pth", "refused to load",
                                        "only load files you trust", "state dict"])
    assert not marker.exists(), "loading the weights ran the pickle's code"

    # control: the payload is live, so the check above is not vacuous
    with open(evil, "rb") as handle:
        if save is _save_torch:
            torch.load(handle, weights_only=False)
        else:
            pickle.load(handle)
    assert marker.exists()


# --- the same kinds of error through the CLI: exit code 2, one stderr line, no traceback -----------

def assert_cli_error(result, parts) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert_parts(lines[0], parts)
    return lines[0]


def test_cli_yaml_syntax_error(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ndata:\n  root: 'unclosed\n  batch_size: 4\n")
    assert_cli_error(run_cli("validate", str(path)), [str(path), "line", "YAML syntax error"])


def test_cli_set_without_equals(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\n")
    assert_cli_error(run_cli("validate", str(path), "--set", "train.epochs"), ["--set", "expected KEY=VALUE"])


def test_cli_unknown_variant_option(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ndata: {root: .}\nvariants:\n  scratch: {backbone: {pretrained: false}}\n")
    assert_cli_error(run_cli("run", str(path), "--variant", "scratchh", "--output", str(tmp_path / "out")),
                     ["unknown variant 'scratchh'", "did you mean: scratch"])
    assert not (tmp_path / "out").exists()


def test_cli_refuses_code_running_weights_before_training(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(2, 1), size=(8, 8))
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pth"
    _save_pickle(ShellOnLoad(marker), evil)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(root), sort_keys=False))
    result = run_cli("run", str(path), "--output", str(tmp_path / "out"), "--no-progress",
                     "--set", "backbone.pretrained=true", "--set", f"backbone.weights={evil}")
    assert_cli_error(result, ["backbone.weights", "refused to load"])
    assert not marker.exists()
