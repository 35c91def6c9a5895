"""Data-parallel training through torchrun (gloo, two CPU processes): the same answers as one process.

Tolerance: two processes give the same images to each global step and DDP averages the two halves'
gradients, which is the one-process mean over the batch; but the sums run in another order (two partial
sums, then an all-reduce; batch-norm-free matmuls over 4 images instead of 8), so float32 results differ
in the last bits and the weights after 10 updates by ~1e-7. Hence 1e-5 (absolute on weights, relative
on losses); accuracies, being counts, are equal. The backbone is frozen (frozen_backbone, no feature
cache) because per-process batch norm statistics would differ for real, not by rounding, and PyTorch's
SyncBatchNorm runs on CUDA only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_image_folder, tiny_recipe
from transferkit.callbacks.checkpoint import load_checkpoint
from transferkit.data.loading import EpochSampler, Shard, kept_samples
from transferkit.engine.placement import Placement
from transferkit.errors import SpecError

STEPS = 5  # 39 training images, global batch 8: four full batches and one of 7, split 4 + 3
METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")

# Imported by every Python process of a run (PYTHONPATH): with TK_FAULT=KIND:RANK:STEP the process of that
# rank, at that training step, sends itself SIGKILL, or sends SIGINT to its parent (the torchrun launcher).
SITECUSTOMIZE = """
import os
if os.environ.get("TK_FAULT") and os.environ.get("RANK") == os.environ["TK_FAULT"].split(":")[1]:
    import signal
    from transferkit.engine.trainer import Trainer
    kind, _, at = os.environ["TK_FAULT"].split(":")
    real, steps = Trainer.to_device, [0]

    def to_device(self, batch):
        if self.model.training:
            steps[0] += 1
            if steps[0] == int(at):
                os.kill(os.getpid() if kind == "SIGKILL" else os.getppid(), getattr(signal, kind))
        return real(self, batch)

    Trainer.to_device = to_device
"""


def _cli(tmp: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    hooks = tmp / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("TK_FAULT", None)
    if fault:
        env["TK_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "transferkit", *args, "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-epoch recipe, run uninterrupted by one process and by two: (tmp, recipe, one-process dir, two-process dir)."""
    tmp = tmp_path_factory.mktemp("ddp")
    root = make_image_folder(tmp / "data", classes=("a", "b", "c"), per_class=(13, 5), size=(32, 32))
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(
        root, data={"batch_size": 8}, optimizer={"lr": 0.05, "momentum": 0.9},
        lr_policy={"name": "frozen_backbone", "feature_cache": False}, train={"epochs": 2, "deterministic": True})))
    one = _cli(tmp, "run", str(recipe), "--output", str(tmp / "one"))
    assert one.returncode == 0, one.stderr
    two = _cli(tmp, "run", str(recipe), "--output", str(tmp / "two"), "--nproc", "2")
    assert two.returncode == 0, two.stderr
    return tmp, recipe, tmp / "one" / "tiny", tmp / "two" / "tiny"


def _final(run_dir: Path):
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [{k: row[k] for k in ("epoch", *METRICS)} for row in rows], load_checkpoint(run_dir / "last.pt")["model"]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_two_processes_match_one_within_float_tolerance_and_write_one_run(runs):
    _, _, one, two = runs
    rows_one, model_one = _final(one / "base")
    rows_two, model_two = _final(two / "base")
    for a, b in zip(rows_one, rows_two, strict=True):
        assert a["train_accuracy"] == b["train_accuracy"] and a["test_accuracy"] == b["test_accuracy"]
        for key in ("train_loss", "test_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    for key in model_one:
        assert torch.allclose(model_one[key].float(), model_two[key].float(), atol=1e-5), key
    assert _files(one) == _files(two)  # one run directory, one set of files: the primary's
    assert sorted(p.name for p in two.parent.iterdir()) == ["tiny"]


def test_evaluation_shards_count_every_image_once():
    for size, world in ((15, 2), (7, 3), (2, 4)):
        shares = []
        for rank in range(world):
            sampler = EpochSampler(size, seed=0, shuffle=False, shard=Shard(rank, world))
            shares += [index for index, _ in sampler]
            assert len(sampler) == len(list(sampler))
        assert sorted(shares) == list(range(size))


def test_training_shards_split_each_global_batch_of_the_one_process_order():
    one = [index for index, _ in EpochSampler(39, seed=3, shuffle=True, batch=8)]
    parts = [EpochSampler(39, seed=3, shuffle=True, batch=8, shard=Shard(rank, 2)) for rank in range(2)]
    for part in parts:
        part.set_epoch(0, skip=16)  # a resume two steps into the epoch
    shares = [[index for index, _ in part] for part in parts]
    assert [len(s) for s in shares] == [len(p) for p in parts] == [12, 11]
    for step, start in enumerate(range(16, 39, 8)):
        mine = shares[0][4 * step:4 * step + 4] + shares[1][4 * step:4 * step + 4]
        assert sorted(mine) == sorted(one[start:start + 8])
    assert kept_samples(37, 8, world=2) == 37 and kept_samples(37, 8, world=4) == 32 and kept_samples(33, 8) == 32


def test_a_batch_that_does_not_divide_is_refused_naming_the_field_and_nearest_sizes():
    with pytest.raises(SpecError, match=r"data.batch_size: 10 .* over 4 processes; use 8 or 12"):
        Placement(0, 4).check_batch(10)
    Placement(0, 2).check_batch(10)


def test_sigkill_of_one_rank_names_it_and_resume_matches_an_uninterrupted_two_process_run(runs):
    tmp, recipe, _, reference = runs
    out = tmp / "killed"
    killed = _cli(tmp, "run", str(recipe), "--output", str(out), "--nproc", "2", fault=f"SIGKILL:1:{STEPS + 3}")
    assert killed.returncode == 1
    assert "error: rank 1 of 2 was killed by SIGKILL" in killed.stderr
    assert load_checkpoint(out / "tiny" / "base" / "last.pt")["epoch"] == 1
    resumed = _cli(tmp, "run", str(recipe), "--output", str(out), "--nproc", "2", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2" in resumed.stderr
    _assert_same_run(reference / "base", out / "tiny" / "base")


def test_sigint_to_the_launcher_stops_every_rank_at_one_step_saves_and_resumes_exactly(runs):
    tmp, recipe, _, reference = runs
    out = tmp / "stopped"
    stopped = _cli(tmp, "run", str(recipe), "--output", str(out), "--nproc", "2", fault=f"SIGINT:0:{STEPS + 2}")
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.count("resume with:") == 1 and "--nproc 2" in stopped.stderr
    saved = load_checkpoint(out / "tiny" / "base" / "last.pt")
    assert saved["epoch"] == 1 and 1 <= saved["partial"]["step"] < STEPS
    assert len(saved["rng"]["ranks"]) == 2
    resumed = _cli(tmp, "run", str(recipe), "--output", str(out), "--nproc", "2", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming epoch 2 at step {saved['partial']['step'] + 1} of" in resumed.stderr
    _assert_same_run(reference / "base", out / "tiny" / "base")


def _assert_same_run(a: Path, b: Path) -> None:
    rows_a, model_a = _final(a)
    rows_b, model_b = _final(b)
    assert rows_a == rows_b
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)


def test_a_multi_label_run_over_two_processes_matches_one_with_split_wide_metrics_and_thresholds(tmp_path):
    from transferkit.synthetic import shapes_table

    table = shapes_table(tmp_path / "shapes", per_split=(16, 8, 8), size=32)
    recipe = tmp_path / "shapes" / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "shapes", "task": "multi_label", "backbone": {"name": "resnet18", "pretrained": False},
        "lr_policy": {"name": "frozen_backbone", "feature_cache": False},
        "data": {"labels": str(table), "image_size": 32, "batch_size": 8, "num_workers": 0},
        "optimizer": {"name": "sgd", "lr": 0.05}, "train": {"epochs": 2, "device": "cpu", "deterministic": True}}))
    one = _cli(tmp_path, "run", str(recipe), "--output", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = _cli(tmp_path, "run", str(recipe), "--output", str(tmp_path / "two"), "--nproc", "2")
    assert two.returncode == 0, two.stderr[-2000:]
    rows = [json.loads((tmp_path / side / "shapes" / "base" / "metrics.json").read_text()) for side in ("one", "two")]
    for a, b in zip(*rows, strict=True):  # mAP over the whole split: every process's outputs gathered first
        for key in ("val_map", "test_map", "test_f1", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    thresholds = [torch.load(tmp_path / side / "shapes" / "base" / "best.pt", weights_only=True)["task"]["state"]
                  for side in ("one", "two")]
    assert thresholds[0]["tuned"] and thresholds[1]["thresholds"] == pytest.approx(thresholds[0]["thresholds"], abs=1e-4)
