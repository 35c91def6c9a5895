"""The hotdog plugin, offline: a tiny hotdog.zip served from 127.0.0.1 and random ResNet-18 weights in TORCH_HOME."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution, entry_points
from pathlib import Path

import pytest
import yaml
from PIL import Image

try:
    distribution("transferkit-hotdog")
except PackageNotFoundError:
    pytest.skip("transferkit-hotdog is not installed; run `pip install -e plugins/hotdog`", allow_module_level=True)

import transferkit_hotdog  # noqa: E402  (registers the dataset and the recipe)
from torch import nn  # noqa: E402
from transferkit import download  # noqa: E402
from transferkit.errors import DataError, DownloadError  # noqa: E402
from transferkit.optim.lr_policies import build_param_groups, describe_groups  # noqa: E402
from transferkit.model.transfer import TransferModel  # noqa: E402
from transferkit.data.preview import LABEL_HEIGHT  # noqa: E402
from transferkit.registry import DATASETS, RECIPES  # noqa: E402
from transferkit import load_recipe  # noqa: E402
from transferkit.recipe.spec import DataSpec  # noqa: E402
from transferkit.recipe.variants import variant_of  # noqa: E402
from transferkit.recipe.yaml_io import read_yaml  # noqa: E402
from transferkit import testing  # noqa: E402
from transferkit.testing import LocalServer, sha1_of  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "hotdog" / "recipe.yaml"
TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 3
COLORS = {"hotdog": (200, 60, 40), "not-hotdog": (40, 120, 200)}


def png(color: tuple[int, int, int], i: int) -> bytes:
    """A 40x40 PNG of one colour with a white stripe whose place and width depend on `i`."""
    image = Image.new("RGB", (40, 40), color)
    top, height = 4 * i % 36, 1 + i // 9
    image.paste((255, 255, 255), (0, top, 40, top + height))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def hotdog_members() -> dict[str, bytes]:
    """hotdog.zip's layout: hotdog/{train,test}/{hotdog,not-hotdog}/*.png, a few tiny images each."""
    members = {}
    for split, count, first in (("train", TRAIN_PER_CLASS, 0), ("test", TEST_PER_CLASS, TRAIN_PER_CLASS)):
        for cls, color in COLORS.items():
            for i in range(first, first + count):  # test images differ from the training ones
                members[f"hotdog/{split}/{cls}/{i:04d}.png"] = png(color, i)
    return members


def make_zip(path: Path, members: dict[str, bytes]) -> str:
    """Write `members` as a zip at `path`; its sha1."""
    return sha1_of(testing.make_zip(path, members))


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data cache (TRANSFERKIT_DATA) for this test only."""
    path = tmp_path / "cache"
    monkeypatch.setenv("TRANSFERKIT_DATA", str(path))
    monkeypatch.setattr(download, "TIMEOUT_S", 5.0)
    return path


@pytest.fixture
def served_zip(tmp_path: Path, server: Server) -> tuple[str, str]:
    """(url, sha1) of a tiny hotdog.zip on the local server."""
    sha1 = make_zip(tmp_path / "hotdog.zip", hotdog_members())
    server.routes["/hotdog.zip"] = (tmp_path / "hotdog.zip").read_bytes()
    return f"{server.base}/hotdog.zip", sha1


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hotdog.zip"


def resolve(**data) -> object:
    return DATASETS.get("hotdog")(DataSpec(dataset="hotdog", **data), 0)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "200", "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "transferkit.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=timeout)


# --- the dataset ----------------------------------------------------------------------------------

def test_download_once_then_cached(cache: Path, server: Server, served_zip: tuple[str, str]) -> None:
    url, sha1 = served_zip
    splits = resolve(options={"url": url, "sha1": sha1})
    assert splits.classes == ["hotdog", "not-hotdog"]
    assert len(splits.train) == 2 * TRAIN_PER_CLASS and len(splits.test) == 2 * TEST_PER_CLASS
    assert sorted({label for _, label in splits.train}) == [0, 1]
    assert server.requests == ["/hotdog.zip"]
    assert splits.root.is_relative_to(cache)

    again = resolve(options={"url": url, "sha1": sha1})
    assert server.requests == ["/hotdog.zip"]  # served from the cache, no second request
    assert [p for p, _ in again.train] == [p for p, _ in splits.train]


def test_wrong_hash_keeps_nothing(cache: Path, server: Server, served_zip: tuple[str, str]) -> None:
    url, sha1 = served_zip
    with pytest.raises(DownloadError, match=f"sha1 of the download is {sha1}, expected {'0' * 40}"):
        resolve(options={"url": url, "sha1": "0" * 40})
    assert not cache.exists() or list(cache.iterdir()) == []


def test_archive_escaping_its_folder_is_refused(tmp_path: Path, cache: Path, server: Server) -> None:
    members = {**hotdog_members(), "../evil.png": png((0, 0, 0), 0)}
    sha1 = make_zip(tmp_path / "evil.zip", members)
    server.routes["/evil.zip"] = (tmp_path / "evil.zip").read_bytes()
    with pytest.raises(DownloadError, match=r"'\.\./evil\.png'.*refused"):
        resolve(options={"url": f"{server.base}/evil.zip", "sha1": sha1})
    assert not (tmp_path / "evil.png").exists() and not (cache.parent / "evil.png").exists()
    assert not any(p.is_dir() for p in cache.iterdir())  # nothing extracted


def test_server_down_says_how_to_work_offline(cache: Path, served_zip: tuple[str, str]) -> None:
    with pytest.raises(DownloadError) as info:
        resolve(options={"url": closed_port_url(), "sha1": served_zip[1]})
    message = str(info.value)
    assert "--set data.root=" in message and "--set backbone.weights=" in message and "TORCH_HOME" in message
    assert "\n" not in message


def test_existing_copy_needs_no_network(tmp_path: Path, cache: Path, server: Server,
                                        served_zip: tuple[str, str]) -> None:
    with zipfile.ZipFile(tmp_path / "hotdog.zip") as zf:
        zf.extractall(tmp_path / "data")
    for root in (tmp_path / "data", tmp_path / "data" / "hotdog"):  # the parent, or the folder itself
        splits = resolve(root=str(root), options={"url": served_zip[0]})
        assert splits.root == tmp_path / "data" / "hotdog"
        assert len(splits.train) == 2 * TRAIN_PER_CLASS
    assert server.requests == []
    with pytest.raises(DataError, match="data.root"):
        resolve(root=str(tmp_path))
    with pytest.raises(DataError, match="unknown key"):
        resolve(root=str(tmp_path / "data"), options={"sha": "x"})


# --- the recipe -----------------------------------------------------------------------------------

def test_example_is_the_registered_recipe() -> None:
    registered = Path(RECIPES.get("hotdog-resnet18"))
    assert registered.is_file() and registered.is_relative_to(Path(transferkit_hotdog.__file__).parent)
    assert read_yaml(EXAMPLE) == read_yaml(registered)
    assert load_recipe("hotdog-resnet18") == load_recipe(EXAMPLE)


def test_recipe_resolves_to_d2l_numbers() -> None:
    spec = load_recipe(EXAMPLE)
    assert (spec.name, spec.base_variant, list(spec.variants)) == ("hotdog", "finetune", ["scratch"])
    assert (spec.backbone.name, spec.backbone.pretrained, spec.backbone.weights) == ("resnet18", True, "IMAGENET1K_V1")
    assert spec.head.name == "linear" and spec.data.dataset == "hotdog"
    assert (spec.data.image_size, spec.data.resize_size, spec.data.batch_size) == (224, 256, 128)
    assert spec.data.mean is None and spec.data.std is None  # ImageNet's, from the weights
    assert (spec.optimizer.name, spec.optimizer.lr, spec.optimizer.weight_decay, spec.optimizer.momentum) == \
        ("sgd", 5e-5, 1e-3, 0.0)
    assert (spec.lr_policy.name, spec.lr_policy.multiplier, spec.schedule.name) == ("head_multiplier", 10, "constant")
    assert (spec.train.epochs, spec.train.loss_reduction) == (5, "sum")

    model = TransferModel(nn.Conv2d(3, 4, 1), nn.Linear(4, 2), (0.5,) * 3, (0.5,) * 3)
    groups = describe_groups(build_param_groups(model, spec.lr_policy, spec.optimizer.lr))
    assert {g["name"]: g["lr"] for g in groups} == pytest.approx({"backbone": 5e-5, "head": 5e-4})

    scratch = variant_of(spec, "scratch")
    assert (scratch.backbone.pretrained, scratch.optimizer.lr, scratch.lr_policy.name) == (False, 5e-4, "uniform")
    assert (scratch.optimizer.weight_decay, scratch.optimizer.momentum, scratch.data.batch_size) == (1e-3, 0.0, 128)
    assert (scratch.train.epochs, scratch.train.loss_reduction) == (5, "sum")
    groups = describe_groups(build_param_groups(model, scratch.lr_policy, scratch.optimizer.lr))
    assert [(g["name"], g["lr"]) for g in groups] == [("all", 5e-4)]


# --- the command line -----------------------------------------------------------------------------

def test_plugin_is_discovered() -> None:
    assert "hotdog" in [ep.name for ep in entry_points(group="transferkit.plugins")]
    result = cli("plugins")  # a fresh process: the entry point, not this test's import, registers
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "transferkit-hotdog" in line)
    assert "loaded" in line and "datasets: hotdog; recipes: hotdog-resnet18" in line

    result = cli("list-datasets", env={"TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 0, result.stderr
    assert "folder" in result.stdout and "hotdog" not in result.stdout


def test_cli_preview_grid(tmp_path: Path, cache: Path, server: Server, served_zip: tuple[str, str]) -> None:
    from typer.testing import CliRunner

    from transferkit.cli import app

    with zipfile.ZipFile(tmp_path / "hotdog.zip") as zf:
        zf.extractall(tmp_path / "data")
    output, cell = tmp_path / "preview.png", 32
    result = CliRunner().invoke(app, ["preview", str(EXAMPLE), "--set", f"data.root={tmp_path / 'data' / 'hotdog'}",
                                      "--cell", str(cell), "--output", str(output)])
    assert result.exit_code == 0, result.output
    with Image.open(output) as image:
        assert image.format == "PNG" and image.size == (8 * cell, 2 * (cell + LABEL_HEIGHT))
    assert server.requests == []


def test_cli_offline_message_is_one_line(tmp_path: Path, served_zip: tuple[str, str]) -> None:
    result = cli("preview", str(EXAMPLE), "--set", f"data.options.url={closed_port_url()}",
                 "--set", f"data.options.sha1={served_zip[1]}", "--output", str(tmp_path / "p.png"),
                 env={"TRANSFERKIT_DATA": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot download"), result.stderr
    assert "--set data.root=" in lines[0] and "--set backbone.weights=" in lines[0]


def test_cli_run_both_variants(tmp_path: Path, server: Server, served_zip: tuple[str, str]) -> None:
    import torch
    import torchvision

    url, sha1 = served_zip
    torch_home = tmp_path / "torch"
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    # random weights under the real file name: torchvision loads IMAGENET1K_V1 from its own cache, offline
    torch.save(torchvision.models.resnet18().state_dict(), checkpoints / "resnet18-f37072fd.pth")
    runs = tmp_path / "runs"
    result = cli("run", str(EXAMPLE), "--set", f"data.options.url={url}", "--set", f"data.options.sha1={sha1}",
                 "--set", "data.image_size=32", "--set", "data.batch_size=4", "--set", "data.num_workers=0",
                 "--set", "train.epochs=1", "--set", "train.checkpoint=false",
                 "--device", "cpu", "--no-progress", "--output", str(runs),
                 env={"TORCH_HOME": str(torch_home), "TRANSFERKIT_DATA": str(tmp_path / "cache")}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "torchvision ResNet18_Weights.IMAGENET1K_V1" in log  # finetune: the weights through TORCH_HOME
    assert "random init" in log  # scratch
    assert "16 train / 6 test images" in log
    assert "lr 5e-05" in log and "lr 0.0005" in log  # backbone, head (x10) and scratch's uniform LR
    assert "finetune" in log and "scratch" in log and "variants compared" in log
    rows = json.loads((runs / "hotdog" / "comparison.json").read_text())
    assert [row["variant"] for row in rows] == ["finetune", "scratch"]
    assert all(len(row["test_accuracy_per_epoch"]) == 1 for row in rows)
    assert (runs / "hotdog" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert server.requests == ["/hotdog.zip"]  # downloaded once for both variants
    assert yaml.safe_load((runs / "hotdog" / "scratch" / "spec.yaml").read_text())["optimizer"]["lr"] == 5e-4
