"""A write the disk refuses is a user error: one line naming the file and the room there, exit 2, no traceback;
the last good checkpoint is kept so --resume continues.

CI runs as root, where chmod stops nothing, so a full disk is a file-size limit (RLIMIT_FSIZE: a write past it
fails with EFBIG; Python ignores SIGXFSZ) or, where mount works, a small tmpfs; a path under a file gives ENOTDIR
and /sys refuses even root.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_image_folder, tiny_recipe

RESNET18_WEIGHTS = 44_000_000  # about what resnet18's float32 weights take; every checkpoint of it holds them


def cli(*args: str, fsize: int | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m transferkit.cli ARGS`, its files limited to `fsize` bytes when given."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "transferkit.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit if fsize else None)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run's `error:` line, after checking it ended with exit 2 and no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny finished run (ResNet-18, 32 px, one epoch) and its recipe."""
    base = tmp_path_factory.mktemp("writes")
    data = make_image_folder(base / "data")
    recipe = base / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(data)))
    result = cli("run", str(recipe), "--output", str(base / "runs"), "--no-progress")
    assert result.returncode == 0, result.stderr
    return {"base": base, "data": data, "recipe": recipe, "variant": base / "runs" / "tiny" / "base"}


def test_checkpoint_size_estimate_covers_what_is_written(trained):
    from transferkit.callbacks.checkpoint import checkpoint_sizes
    from transferkit.model.build import build_model
    from transferkit.optim.optimizers import build_optimizer
    from transferkit.recipe.spec import validate

    spec = validate(tiny_recipe(trained["data"]))
    model = build_model(spec, 2, pretrained=False).model
    last, best = checkpoint_sizes(spec, model, build_optimizer(spec.optimizer, [{"params": list(model.parameters())}]))
    written_last, written_best = ((trained["variant"] / name).stat().st_size for name in ("last.pt", "best.pt"))
    assert written_last <= last <= written_last * 1.05, (written_last, last)
    assert written_best <= best <= written_best * 1.05, (written_best, best)

    import io

    import torch

    adamw = validate(tiny_recipe(trained["data"], optimizer={"name": "adamw", "lr": 1e-3}))
    optimizer = build_optimizer(adamw.optimizer, [{"params": list(model.parameters())}])
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # AdamW's two moments now exist for every parameter
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimization": {"optimizer": optimizer.state_dict()}}, buffer)
    estimate, _ = checkpoint_sizes(adamw, model, optimizer)
    assert buffer.tell() <= estimate <= buffer.tell() * 1.05, (buffer.tell(), estimate)


def test_a_run_whose_checkpoints_cannot_fit_is_refused_before_training(trained, tmp_path):
    result = cli("run", str(trained["recipe"]), "--output", str(tmp_path / "runs"), "--no-progress",
                 fsize=8_000_000)
    line = one_error_line(result)
    assert "last.pt will need about" in line and "over this process's file-size limit of 8,000,000 bytes" in line
    assert " epoch 1/" not in result.stderr  # refused before the first step
    assert not list(tmp_path.glob("runs/*/*/*.pt"))


def test_an_atomic_write_that_fails_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"good checkpoint")
    script = textwrap.dedent(f"""
        import resource
        from pathlib import Path
        from transferkit.errors import WriteError
        from transferkit.files import atomic_write_bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            atomic_write_bytes(Path({str(target)!r}), bytes(1_000_000))
        except WriteError as exc:
            print(exc)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{target}: cannot write 1,000,000 bytes (1.0 MB) (File too large); ")
    assert "bytes" in result.stdout.split("; ")[1] and "free there" in result.stdout, result.stdout
    assert "files limited to 100,000 bytes (0.1 MB) (ulimit -f)" in result.stdout
    assert target.read_bytes() == b"good checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_checkpoint_streams_to_disk_and_a_refused_write_names_its_cause(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"good checkpoint")
    script = textwrap.dedent(f"""
        import resource, tracemalloc
        from pathlib import Path
        import torch
        from transferkit.errors import WriteError
        from transferkit.files import atomic_torch_save
        weights = {{"w": torch.ones(10_000_000)}}  # 40 MB
        tracemalloc.start()
        atomic_torch_save(Path({str(tmp_path / "big.pt")!r}), weights)
        print("peak MB", tracemalloc.get_traced_memory()[1] / 1e6)
        tracemalloc.stop()
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            atomic_torch_save(Path({str(target)!r}), weights)
        except WriteError as exc:
            print(exc)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    peak, error = result.stdout.splitlines()
    assert float(peak.split()[-1]) < 4, peak  # no in-memory copy of the 40 MB file (a BytesIO held 80 MB)
    import torch

    assert torch.equal(torch.load(tmp_path / "big.pt", weights_only=True)["w"], torch.ones(10_000_000))
    assert error.startswith(f"{target}: cannot write 40,000,000 bytes (40.0 MB) (File too large); "), error
    assert target.read_bytes() == b"good checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt", "last.pt"]


def test_evaluate_predict_and_export_outputs_that_cannot_be_written_are_one_line(trained, tmp_path):
    variant = str(trained["variant"])
    line = one_error_line(cli("evaluate", variant, "--output", str(tmp_path / "eval"), "--no-progress",
                              fsize=4_000))
    assert str(tmp_path / "eval") in line and "(File too large)" in line and "free there" in line

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = one_error_line(cli("evaluate", variant, "--output", str(blocker / "eval"), "--no-progress"))
    assert str(blocker / "eval") in line and "Not a directory" in line

    photos = str(trained["data"] / "test")
    line = one_error_line(cli("predict", variant, photos, "-o", str(tmp_path / "preds.csv"), "--no-progress",
                              fsize=300))
    assert f"{tmp_path / 'preds.csv'}: cannot write" in line and "(File too large)" in line
    assert (tmp_path / "preds.csv").read_text().startswith("path,label,probability")  # rows so far are kept

    line = one_error_line(cli("predict", variant, photos, "-o", "/sys/transferkit-preds.csv", "--no-progress"))
    assert "/sys/transferkit-preds.csv: cannot create the file (Permission denied)" in line

    line = one_error_line(cli("export", variant, "--output", str(tmp_path / "model.onnx"), fsize=1_000_000))
    assert "model.onnx will need about" in line and "ulimit -f" in line
    assert not list(tmp_path.glob("*onnx*")) and not list(tmp_path.glob(".*tmp"))


def _mount_tmpfs(folder: Path, megabytes: int) -> bool:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A factory of tmpfs folders of N MB (skips where mount is not allowed); unmounted afterwards."""
    mounted = []

    def make(name: str, megabytes: int) -> Path:
        folder = tmp_path / name
        if not _mount_tmpfs(folder, megabytes):
            pytest.skip("mount -t tmpfs is not allowed here")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def test_resnet18_on_an_8_mb_disk_is_refused_before_training(trained, small_disk):
    disk = small_disk("disk", 8)
    line = one_error_line(cli("run", str(trained["recipe"]), "--output", str(disk / "runs"), "--no-progress"))
    assert f"output_dir (--output): {disk}" in line and "free and this run needs about" in line, line
    assert not any(disk.iterdir())


def test_a_disk_that_fills_during_training_keeps_the_last_checkpoint_and_resume_continues(trained, small_disk):
    disk = small_disk("disk", 4 * RESNET18_WEIGHTS // 1_000_000)  # room for the run, and little more
    data = make_image_folder(disk.parent / "more-data", per_class=(64, 4))
    recipe = disk.parent / "three-epochs.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(data, train={"epochs": 3})))
    env = {**os.environ, "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "transferkit.cli", "run", str(recipe), "--output", str(disk / "runs"),
               "--no-progress"]
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = disk / "runs" / "tiny" / "base" / "last.pt"
    while not last.is_file() and run.poll() is None:  # epoch 1's checkpoint: then another program fills the disk
        time.sleep(0.02)
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(bytes(1 << 20))
        except OSError:
            pass
    _, stderr = run.communicate(timeout=600)
    result = subprocess.CompletedProcess(command, run.returncode, "", stderr)
    line = one_error_line(result)
    assert "No space left on device" in line and "cannot write" in line and "free there" in line, line
    assert f"the last good checkpoint {last} is kept" in line and f"--resume {last.parent.parent}" in line
    assert "base epoch 2/3" in stderr  # the finished epoch's line came before its checkpoint failed
    from transferkit.model.checkpoint_format import load_checkpoint

    assert load_checkpoint(last)["epoch"] == 1 and not list(last.parent.glob(".*.tmp"))
    filler.unlink()
    resumed = subprocess.run([*command[:-1], "--resume", str(last.parent.parent), "--no-progress"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2" in resumed.stderr
    assert [row["epoch"] for row in json.loads((last.parent / "metrics.json").read_text())] == [1, 2, 3]
