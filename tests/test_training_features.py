"""The fine-tuning features on real computation: freeze schedule, early stopping, validation split, EMA,
accumulation, one-cycle, LR finder, class imbalance, augmentation policies and data-wait timing."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console
from torch import nn

from conftest import make_image_folder, run_cli, tiny_recipe
from transferkit import Experiment
from transferkit.callbacks.ema import EMA
from transferkit.callbacks.checkpoint import load_checkpoint
from transferkit.data.balance import balanced_weights, loss_weights
from transferkit.data.loading import EpochSampler
from transferkit.engine.callbacks import Callback
from transferkit.engine.optimization import Optimization
from transferkit.engine.trainer import Trainer
from transferkit.errors import SpecError
from transferkit.optim.schedules import LRFactor
from transferkit.recipe.load import validate
from transferkit.recipe.spec import ScheduleSpec
from transferkit.run.assemble import assemble, load_splits
from transferkit.run.lr_find import sweep_lr

QUIET = Console(quiet=True)


class Snapshots(Callback):
    """Copies of the model's state after every epoch."""

    def __init__(self):
        self.states = []

    def on_epoch_end(self, trainer, epoch, row):
        self.states.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


def test_backbone_is_frozen_for_the_first_epochs_then_trains(image_root):
    spec = validate(tiny_recipe(image_root, train={"epochs": 2, "freeze_epochs": 1, "checkpoint": False},
                                lr_policy={"name": "head_multiplier"}))
    snapshots = Snapshots()
    parts = assemble(spec, QUIET, progress=False, callbacks=[snapshots])
    from transferkit.callbacks.freeze_schedule import FreezeSchedule
    parts.trainer.callbacks.insert(0, FreezeSchedule(1))  # before the snapshots, as the connector orders it
    names = [g["name"] for g in parts.trainer.optimizer.param_groups]
    assert names == ["backbone", "head"]  # both groups exist from step 0
    initial = {k: v.detach().clone() for k, v in parts.trainer.model.state_dict().items()}
    parts.trainer.fit(parts.train_loader, parts.eval_loaders, 2)
    after_frozen, after_thawed = snapshots.states
    backbone = [k for k in initial if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(initial[k], after_frozen[k]) for k in backbone), "weights and BN statistics stay put"
    assert not torch.equal(initial["head.weight"], after_frozen["head.weight"])
    assert any(not torch.equal(after_frozen[k], after_thawed[k]) for k in backbone if "conv" in k)


def test_early_stopping_stops_where_the_patience_says_and_says_why(image_root, tmp_path):
    raw = tiny_recipe(image_root, output_dir=str(tmp_path / "runs"), data={"val_split": 0.25},
                      train={"epochs": 6, "early_stopping": {"patience": 2, "min_delta": 1.0}, "selection": "best"})
    result = Experiment.from_dict(raw).run(progress=False, console=QUIET)["base"]
    assert len(result.history) == 3  # epoch 1 sets the best; 2 and 3 cannot improve by more than 1.0
    assert result.stop_reason.startswith("early stop after epoch 3 of 6: val_accuracy")
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == result.stop_reason and "epoch 1" in summary["best_checkpoint"]
    best = load_checkpoint(result.run_dir / "best.pt")
    assert best["epoch"] == 1 and best["selected_on"] == "val_accuracy"
    assert "optimizer" not in best and "optimization" not in best  # best.pt: weights and what predicting needs


def test_val_split_is_seeded_stratified_and_disjoint(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=(10, 2))
    spec = validate(tiny_recipe(root, data={"val_split": 0.2}))
    first, again = load_splits(spec), load_splits(spec)
    assert first.val == again.val
    assert sorted(label for _, label in first.val) == [0, 0, 1, 1, 2, 2]
    assert not {p for p, _ in first.val} & {p for p, _ in first.train}
    assert len(first.train) + len(first.val) == 30
    other = load_splits(validate(tiny_recipe(root, seed=1, data={"val_split": 0.2})))
    assert other.val != first.val


def test_a_validation_metric_without_a_validation_split_is_refused_before_training(image_root, tmp_path):
    raw = tiny_recipe(image_root, output_dir=str(tmp_path / "runs"), train={"best_metric": "val_accuracy"})
    with pytest.raises(SpecError, match="data.val_split"):
        Experiment.from_dict(raw).run(progress=False, console=QUIET)
    assert not (tmp_path / "runs").exists()  # nothing left behind


def _toy_trainer(callbacks=(), accumulate=1, reduction="mean", lr=0.1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    optimization = Optimization(optimizer, device=torch.device("cpu"), accumulate_steps=accumulate,
                                loss_reduction=reduction)
    return Trainer(model, optimization, device=torch.device("cpu"), callbacks=callbacks)


def test_ema_weights_equal_a_hand_computed_average():
    ema = EMA(decay=0.75)
    trainer = _toy_trainer([ema])
    ema.on_fit_start(trainer)
    expected = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    x, y = torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,))
    for _ in range(5):
        trainer.optimization.step(trainer.model, x, y, update=True)
        ema.after_update(trainer, trainer.optimization.updates)
        for k, v in trainer.model.state_dict().items():
            expected[k] = 0.75 * expected[k] + 0.25 * v
    for k in expected:
        assert torch.allclose(ema.shadow[k], expected[k], atol=1e-6), k
    assert not torch.allclose(ema.shadow["1.weight"], trainer.model.state_dict()["1.weight"])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_four_accumulated_batches_of_8_update_like_one_batch_of_32(reduction):
    x, y = torch.randn(32, 3, 2, 2), torch.randint(0, 3, (32,))
    whole = _toy_trainer(reduction=reduction)
    whole.optimization.step(whole.model, x, y, update=True)
    parts = _toy_trainer(accumulate=4, reduction=reduction)
    for i in range(4):
        update = parts.optimization.is_update_boundary(i + 1, 4)
        assert update == (i == 3)
        parts.optimization.step(parts.model, x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8], update=update)
    for a, b in zip(whole.model.parameters(), parts.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert parts.optimization.updates == 1


def test_clipping_bounds_the_gradient_norm():
    trainer = _toy_trainer(lr=1.0)
    trainer.optimization.clip_grad_norm = 0.01
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.optimization.step(trainer.model, torch.randn(8, 3, 2, 2) * 100, torch.randint(0, 3, (8,)), update=True)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(trainer.model.parameters(), before)])
    assert moved.norm().item() == pytest.approx(0.01, rel=1e-3)  # SGD at lr 1 moves by the clipped gradient


def test_schedules_are_sized_in_optimizer_updates(image_root):
    spec = validate(tiny_recipe(image_root, data={"batch_size": 2}, schedule={"name": "onecycle"},
                                train={"epochs": 2, "accumulate_steps": 3, "checkpoint": False}))
    parts = assemble(spec, QUIET, progress=False)
    batches = len(parts.train_loader)  # 16 training images, batch 2 -> 8 batches, 3 updates per epoch
    assert batches == 8
    factor = parts.trainer.optimization.scheduler.lr_lambdas[0]
    assert factor.total == 2 * 3
    parts.trainer.fit(parts.train_loader, parts.eval_loaders, 2)
    assert parts.trainer.optimization.updates == 6
    assert parts.trainer.optimization.scheduler.last_epoch == 6


def test_onecycle_rises_to_the_lr_then_anneals_far_below():
    factor = LRFactor(ScheduleSpec(name="onecycle", pct_start=0.25, div_factor=25, final_div_factor=1e4), 10, 4)
    values = [factor(step) for step in range(40)]
    assert values[0] == pytest.approx(1 / 25)
    assert max(values) == pytest.approx(1.0, abs=1e-3) and values.index(max(values)) == 10
    assert values[-1] < 0.01 and factor(40) == pytest.approx(1 / (25 * 1e4))
    assert values[:11] == sorted(values[:11]) and values[10:] == sorted(values[10:], reverse=True)


def test_warmup_steps_then_cosine():
    factor = LRFactor(ScheduleSpec(name="cosine", warmup_steps=4), 10, 1)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(9) < factor(5) < 1.0


@pytest.fixture
def sweep_root(tmp_path):
    """Enough images for a sweep of 60 updates whose loss curve has a readable valley at 1 or 2 torch threads
    and seeds 0-3 (24 updates did at 2 threads but were called noisy at 1; 12 over 16 images, flat)."""
    return make_image_folder(tmp_path / "sweep", per_class=(16, 2))


def test_lr_find_leaves_the_model_untouched_and_suggests_an_lr(sweep_root):
    spec = validate(tiny_recipe(sweep_root, train={"checkpoint": False}))
    parts = assemble(spec, QUIET, progress=False)
    before = {k: v.detach().clone() for k, v in parts.trainer.model.state_dict().items()}
    result = sweep_lr(parts.trainer, parts.train_loader, spec.optimizer.lr, 1e-5, 1.0, steps=60)
    assert result.warning is None, result.warning
    assert len(result.lrs) >= 5 and result.lrs[0] == pytest.approx(1e-5)
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]
    after = parts.trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not parts.trainer.optimizer.state  # the original optimizer took no step


def test_lr_find_cli_writes_its_png_and_a_ready_set_line(sweep_root, tmp_path):
    import yaml
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(sweep_root, output_dir=str(tmp_path / "runs"))))
    result = run_cli("lr-find", str(recipe), "--steps", "60", "--start-lr", "1e-5", "--end-lr", "1",
                     "--output", str(tmp_path / "lr.png"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("--set optimizer.lr=")
    float(result.stdout.strip().split("=")[1])
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "runs").exists()  # no run left behind


def test_balanced_sampling_draws_the_classes_evenly():
    labels = [0] * 90 + [1] * 10
    sampler = EpochSampler(len(labels), seed=0, shuffle=True, weights=balanced_weights(labels))
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += [labels[i] for i, _ in sampler]
    share = sum(drawn) / len(drawn)
    assert 0.45 < share < 0.55
    sampler.set_epoch(3)
    first = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == first  # a function of (seed, epoch): resumes exactly


def test_class_weights_auto_follow_inverse_frequency_with_a_power():
    weights = loss_weights("auto", 1.0, [0] * 30 + [1] * 10, ["a", "b"])
    assert weights[1] / weights[0] == pytest.approx(3.0) and weights.mean() == pytest.approx(1.0)
    soft = loss_weights("auto", 0.5, [0] * 30 + [1] * 10, ["a", "b"])
    assert soft[1] / soft[0] == pytest.approx(3.0 ** 0.5)
    with pytest.raises(SpecError, match="3 weights for 2 classes"):
        loss_weights([1.0, 2.0, 3.0], 1.0, [0, 1], ["a", "b"])


def test_class_weights_reach_the_loss(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(12, 2))
    spec = validate(tiny_recipe(root, train={"class_weights": [1.0, 3.0], "checkpoint": False}))
    parts = assemble(spec, QUIET, progress=False)
    assert parts.trainer.optimization.criterion.weight.tolist() == [1.0, 3.0]


def test_augmentation_policies_and_batch_mixing_train(image_root, tmp_path):
    raw = tiny_recipe(image_root, output_dir=str(tmp_path / "runs"),
                      data={"augment": {"policy": "trivialaugment", "random_erasing": 0.5, "mixup": 0.2,
                                        "cutmix": 1.0}, "sampler": "balanced", "interpolation": "bicubic",
                            "cache": "memory"})
    result = Experiment.from_dict(raw).run(progress=False, console=QUIET)["base"]
    row = result.history[0]
    assert row["train_loss"] > 0 and 0 <= row["test_accuracy"] <= 1
    assert row["data_wait_seconds"] >= 0 and row["step_seconds"] > 0
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"data_wait_seconds", "step_seconds"} <= set(header)
    plan = json.loads((result.run_dir / "data_plan.json").read_text())
    assert plan["train_source"] == "loader" and plan["sampler"] == "balanced"


def test_a_policy_the_device_path_cannot_do_is_refused_when_the_recipe_is_read(image_root, tmp_path):
    import yaml
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(image_root, data={"augment_on": "device",
                                                                   "augment": {"policy": "randaugment"}})))
    result = run_cli("validate", str(recipe))
    assert result.returncode == 2
    assert "data.augment_on: cpu" in result.stderr and "Traceback" not in result.stderr


def test_contradictions_are_refused_when_the_recipe_is_read(image_root):
    with pytest.raises(SpecError, match="freeze_epochs"):
        Experiment.from_dict(tiny_recipe(image_root, lr_policy={"name": "frozen_backbone"},
                                         train={"epochs": 3, "freeze_epochs": 1}))
    with pytest.raises(SpecError, match="share one"):
        Experiment.from_dict(tiny_recipe(image_root, train={"best_metric": "val_loss", "early_stopping":
                                                            {"metric": "val_accuracy"}}))
    with pytest.raises(SpecError, match="mixup and cutmix"):
        Experiment.from_dict(tiny_recipe(image_root, lr_policy={"name": "frozen_backbone"},
                                         data={"augment": {"mixup": 0.2}}))


def test_keep_best_leaves_only_best_pt_and_keep_last_only_last_pt(image_root, tmp_path):
    base = tiny_recipe(image_root, output_dir=str(tmp_path / "runs"),
                       variants={"onlylast": {"train": {"keep": "last"}}})
    base["train"]["keep"] = "best"
    result = Experiment.from_dict(base).run(progress=False, console=QUIET)
    assert (result["base"].run_dir / "best.pt").is_file() and not (result["base"].run_dir / "last.pt").exists()
    assert (result["onlylast"].run_dir / "last.pt").is_file()
    assert not (result["onlylast"].run_dir / "best.pt").exists()
    slim = (result["base"].run_dir / "best.pt").stat().st_size
    full = (result["onlylast"].run_dir / "last.pt").stat().st_size
    assert slim < full  # no optimizer state in best.pt


def test_training_crops_can_be_smaller_than_the_evaluation_size(image_root, tmp_path):
    for where in ("cpu", "device"):  # the loader's crops and the resident images' batched crops
        spec = validate(tiny_recipe(image_root, data={"image_size": 48, "train_image_size": 32, "augment_on": where},
                                    train={"epochs": 1, "checkpoint": False}))
        parts = assemble(spec, QUIET, progress=False)
        assert parts.plan.train_source == ("loader" if where == "cpu" else "device_bank")
        train_images, _ = parts.trainer.to_device(next(iter(parts.train_loader)))  # the device crops here
        eval_images, _ = parts.trainer.to_device(next(iter(parts.eval_loaders["test"])))
        assert train_images.shape[-2:] == (32, 32) and eval_images.shape[-2:] == (48, 48)
        assert parts.preprocessing.to_dict()["train_size"] == 32
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps(tiny_recipe(image_root, data={"image_size": 48, "train_image_size": 32})))
    result = run_cli("run", str(recipe), "--no-progress", "--output", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train 32px / eval 48px" in result.stderr
    best = load_checkpoint(next((tmp_path / "runs").glob("*/*/best.pt")))
    assert best["preprocessing"]["input_size"] == 48 and best["preprocessing"]["train_size"] == 32


def test_frozen_batch_norm_statistics_stay_put_while_the_weights_train(image_root):
    from transferkit.run.probe import probe_head

    spec = validate(tiny_recipe(image_root, train={"epochs": 1, "checkpoint": False, "freeze_bn_stats": True,
                                                   "probe_epochs": 1}))
    parts = assemble(spec, QUIET, progress=False)
    initial = {k: v.detach().clone() for k, v in parts.trainer.model.state_dict().items()}
    probe_head(parts, QUIET)  # freezes the backbone, then thaws it: the statistics must stay frozen after
    parts.trainer.fit(parts.train_loader, parts.eval_loaders, 1)
    after = parts.trainer.model.state_dict()
    statistics = [k for k in initial if k.startswith("backbone.") and ("running_" in k or "num_batches" in k)]
    assert statistics and all(torch.equal(initial[k], after[k]) for k in statistics)
    weights = [k for k in initial if k.startswith("backbone.") and k.endswith("bn1.weight")]
    assert weights and any(not torch.equal(initial[k], after[k]) for k in weights)


def test_training_size_and_frozen_statistics_that_would_do_nothing_are_refused(image_root):
    frozen = {"name": "frozen_backbone", "feature_cache": True}
    with pytest.raises(SpecError, match="data.train_image_size"):
        Experiment.from_dict(tiny_recipe(image_root, data={"train_image_size": 24}, lr_policy=frozen))
    with pytest.raises(SpecError, match="train.freeze_bn_stats"):
        Experiment.from_dict(tiny_recipe(image_root, train={"freeze_bn_stats": True},
                                         lr_policy={"name": "frozen_backbone"}))


def test_auto_cache_holds_no_images_in_memory_that_a_one_epoch_run_reads_once(image_root, tmp_path):
    plans = {}
    for name, train in {"once": {"epochs": 1}, "twice": {"epochs": 2}, "ema": {"epochs": 1, "ema": {}}}.items():
        raw = tiny_recipe(image_root, name=name, output_dir=str(tmp_path / "runs"), train=train,
                          data={"cache": "auto"})
        result = Experiment.from_dict(raw).run(progress=False, console=QUIET)["base"]
        plans[name] = json.loads((result.run_dir / "data_plan.json").read_text())
    assert (plans["once"]["train_cache"], plans["once"]["eval_cache"]) == ("none", "none")
    assert any("read once in 1 epoch" in reason for reason in plans["once"]["reasons"])
    assert (plans["twice"]["train_cache"], plans["twice"]["eval_cache"]) == ("memory", "memory")
    assert (plans["ema"]["train_cache"], plans["ema"]["eval_cache"]) == ("none", "memory")  # EMA evaluates twice
