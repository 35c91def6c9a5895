"""The Experiment: builds each variant of a recipe, trains it through the engine, and collects results.

The CLI and scripts both go through this object, so whatever the CLI can do a script can do too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from transferkit.callbacks.bad_images import BadImageReport
from transferkit.callbacks.best import BestTracker, resolved_rule, rule_words, standard_error
from transferkit.callbacks.budget import Budget
from transferkit.callbacks.checkpoint import checkpoint_sizes, load_checkpoint
from transferkit.callbacks.run_clock import RunClock
from transferkit.cpu_memory import fallback_reason
from transferkit.data.shared import SharedCaches
from transferkit.data.stream_loaders import readers_changed
from transferkit.device import describe_device, resolve_device
from transferkit.engine.callbacks import Callback, RunContext
from transferkit.engine.placement import Placement
from transferkit.engine.trainer import Interrupted
from transferkit.errors import TransferkitError, WriteError
from transferkit.inference.evaluate import evaluate_run_dir
from transferkit.files import atomic_write_text
from transferkit.optim.lr_policies import describe_groups
from transferkit.plugins import load_plugins
from transferkit.recipe.load import read_recipe, recipe_of_dict
from transferkit.recipe.spec import ExperimentSpec
from transferkit.recipe.variants import variant_names, variant_of
from transferkit.recipe.yaml_io import dump_yaml
from transferkit.run import report
from transferkit.run.assemble import Assembled, assemble, per_epoch_splits
from transferkit.run.connector import CallbackConnector
from transferkit.run.probe import probe_head
from transferkit.run.final_evaluation import finish_variant
from transferkit.run.model_card import card_details, write_model_card
from transferkit.run.results import ExperimentResult, VariantResult, read_summary, write_summary
from transferkit.rundir import RunDir, RunRoot
from transferkit.signals import GracefulStop, RunInterrupted
from transferkit.run.validation import check_device, check_schema_and_presets, validate_spec


class Experiment:
    """A recipe ready to run: `Experiment.from_yaml(path).run()` trains every variant and compares them."""

    def __init__(self, spec: ExperimentSpec, source: str = "recipe", overrides: list[str] | None = None):
        # every phase of run/validation.py: validate and run refuse the same recipes, before any image is read
        self.spec = validate_spec(spec, source, overrides)
        self.source = source

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "Experiment":
        """Load and validate a recipe file (or registered recipe name), with `--set`-style overrides."""
        load_plugins()  # a plugin may register the recipe name
        recipe = read_recipe(path, overrides)
        check_schema_and_presets(recipe)  # with the file's text, so schema errors name their line
        return cls(recipe.spec, source=recipe.source, overrides=overrides)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], overrides: list[str] | None = None) -> "Experiment":
        """Validate a recipe given as a plain dict."""
        recipe = recipe_of_dict(raw, overrides)
        check_schema_and_presets(recipe)
        return cls(recipe.spec, source="recipe", overrides=overrides)

    @property
    def variant_names(self) -> list[str]:
        """The base run's name, then each variant's."""
        return variant_names(self.spec)

    def variant_spec(self, name: str) -> ExperimentSpec:
        """The full spec of one variant."""
        return variant_of(self.spec, name, source=self.source)

    def run(self, variants: list[str] | None = None, output_dir: str | Path | None = None,
            device: str | None = None, console: Console | None = None, progress: bool = True,
            resume: str | Path | None = None, resume_command=None, run_root: Path | None = None,
            callbacks: list[Callback] | None = None, caches: SharedCaches | None = None,
            test_report: bool = True) -> ExperimentResult:
        """Train the chosen variants (default: all) one after another; print and save a comparison.

        `resume` is a run folder, one of its variant folders, or "auto" (the latest unfinished run of this
        experiment under `output_dir`). `callbacks` join each variant's trainer after the built-in features and
        the recipe's train.callbacks, before the loggers and the checkpoint (run/connector.py).

        `resume_command(run_root)`, when given, is printed with the first Ctrl-C, so the way back is on screen
        even if a second Ctrl-C ends the process at once. `run_root` names the run folder instead of the next
        free `<output_dir>/<name>[-N]`. `caches` (data.shared.SharedCaches) hands decoded images and frozen-backbone
        features from variant to variant (the folds of `transferkit cv` read the same images). `test_report=False`
        writes no test report (evaluation/test/: tables and plots), as a search's trials do: the test pass's
        metrics are still in summary.json, and the study reads only the validation split.
        """
        console = console or Console(stderr=True, soft_wrap=True)
        names = variants or self.variant_names
        specs = [self.variant_spec(n) for n in names]  # validate all before training any
        if device:
            specs = [s.model_copy(update={"train": s.train.model_copy(update={"device": device})}) for s in specs]
        connector = CallbackConnector(callbacks or [])
        placement = Placement.from_env()  # under torchrun: this process's rank among all
        for spec in specs:  # the device phase again, for the device it runs on
            check_device(spec, processes=placement.world_size)
        if not placement.is_primary:  # one process speaks and writes
            console, progress = Console(stderr=True, quiet=True), False
        if resume:  # the primary finds the run and hands it to the others (other machines may not see the folder)
            resume = placement.broadcast(RunRoot.to_resume(resume, output_dir or self.spec.output_dir, self.spec.name)
                                         .path if placement.is_primary else None)
        if resume and placement.is_primary:
            RunRoot(resume).check_resumable(self.spec.name, {n: self.variant_spec(n).model_dump(mode="json")
                                                             for n in self.variant_names})
        if run_root is None:
            run_root = Path(resume) if resume else RunRoot.fresh(output_dir or self.spec.output_dir,
                                                                 self.spec.name).path
        run_root = placement.broadcast(run_root)
        results: dict[str, VariantResult] = {}
        def notify(message: str) -> None:
            console.print(f"[yellow]{message}[/]", highlight=False)
            if resume_command:
                console.print(f"  to resume later: {resume_command(run_root)}", markup=False, highlight=False,
                              soft_wrap=True)

        with GracefulStop(notify) as stop:
            for name, spec in zip(names, specs):
                results[name] = run_variant(spec, name, run_root / name, console, progress,
                                            resume=bool(resume), should_stop=stop.is_requested, placement=placement,
                                            connector=connector, caches=caches, test_report=test_report)
        result = ExperimentResult(self.spec.name, results, run_root)
        if placement.is_primary:
            report.write_comparison(result)
            report.print_comparison(result, console)
        placement.close()
        if placement.is_primary:
            for name, variant in results.items():
                if test_report and not RunDir(variant.run_dir).evaluation_metrics("test").is_file():
                    evaluate_run_dir(variant.run_dir, "test", console, progress)  # the report, when the run's own
                    # test pass could not write it (several processes)
                if variant.details:  # a variant finished by an older version has none
                    write_model_card(variant.run_dir)
                connector.run_ended(name, variant.run_dir)
        return result




def run_variant(spec: ExperimentSpec, name: str, run_dir: Path, console: Console, progress: bool = True,
                resume: bool = False, should_stop=lambda: False, placement: Placement | None = None,
                connector: CallbackConnector | None = None, caches: SharedCaches | None = None,
                test_report: bool = True) -> VariantResult:
    """Build, train and evaluate one variant, writing its run directory as it goes (the primary process only:
    what the others read of it, the primary hands them); `caches`: shared with the other variants."""
    placement = placement or Placement()
    primary = placement.is_primary
    files = RunDir(run_dir)
    finished = placement.broadcast(resume and primary and files.is_finished)
    if finished:
        console.print(f"[bold]{name}[/]: finished already in {run_dir}; --resume finishes what a run started, and "
                      f"this one is done. For more epochs from its best.pt, in a new run folder: transferkit "
                      f"continue {run_dir} --epochs N", highlight=False)
        return placement.broadcast(read_summary(name, run_dir) if primary else None)
    started = time.monotonic()
    if resolve_device(spec.train.device).type == "cpu" and primary and fallback_reason():
        console.print(f"[dim]CPU allocator: glibc's malloc ({fallback_reason()}); CPU training runs slower with it "
                      f"(docs/performance.md, \"The CPU allocator\")[/]", markup=True, highlight=False)
    parts = assemble(spec, console, progress, placement=placement, before_data=room_check(spec, files, placement),
                     caches=caches)
    run = RunContext(spec, name, run_dir, parts.splits.classes, parts.preprocessing, parts.selection, console,
                     placement, started, parts.task)
    trainer = parts.trainer
    trainer.callbacks = (connector or CallbackConnector()).build(run)
    saved = placement.broadcast(load_checkpoint(files.last) if primary and resume and files.last.is_file()
                                else None)
    if saved is not None:
        changed = saved.get("partial") and files.data_plan.is_file() and \
            readers_changed(json.loads(files.data_plan.read_text()), parts.plan)
        if changed:
            raise TransferkitError(changed)
        trainer.load_state_dict(saved)
        partial = trainer.partial  # worded as the interrupt worded it: the next step, of the epoch's steps
        where = (f"epoch {trainer.epoch + 1} at step {partial['step'] + 1} of {partial['steps']}" if partial
                 else f"at epoch {trainer.epoch + 1}")
        console.print(f"[bold]{name}[/]: resuming {where} from {files.last}")
        if partial and hasattr(parts.train_loader, "describe_resume"):
            console.print(f"  streamed shards: {parts.train_loader.describe_resume(partial['step'])}", highlight=False)
    probe_seconds = 0.0
    if spec.train.probe_epochs and trainer.epoch == 0 and trainer.partial is None:
        probe_seconds = probe_head(parts, console)
    clock = trainer.callback(RunClock)
    clock.setup, clock.probe = time.monotonic() - started - probe_seconds, probe_seconds
    groups = describe_groups(parts.param_groups)
    if primary:
        files.prepare()  # only now: a run that failed before training leaves no folder behind
        atomic_write_text(files.spec, dump_yaml(spec))
        atomic_write_text(files.param_groups, json.dumps(groups, indent=2))
        weights = {"class_weights": dict(zip(parts.splits.classes, parts.class_weights))} if parts.class_weights else {}
        atomic_write_text(files.data_plan, json.dumps({**parts.plan.to_dict(), **weights}, indent=2))
    _print_header(console, name, parts, groups, run_dir)
    try:
        trainer.fit(parts.train_loader, parts.eval_loaders, spec.train.epochs, should_stop,
                    per_epoch_splits(spec, parts.eval_loaders))
    except Interrupted as stop:
        step, steps = (stop.partial["step"], stop.partial["steps"]) if stop.partial else (0, 0)
        raise RunInterrupted(run_dir.parent, name, stop.epoch, step, steps) from None
    except WriteError as exc:
        kept = (f"the last good checkpoint {files.last} is kept: make room, then continue with --resume "
                f"{run_dir.parent}" if files.last.is_file() else "no checkpoint had been written yet")
        raise WriteError(f"{exc}; {kept}") from exc
    if trainer.stop_reason:
        console.print(f"[bold]{name}[/]: {trainer.stop_reason}", highlight=False)
    finished = finish_variant(parts, run_dir, console, test_report)
    tracker = trainer.callback(BestTracker)
    bad = trainer.callback(BadImageReport)
    spent = clock.totals()  # a resumed run's earlier processes included
    timing = time_spent(trainer.history, spent["setup"], spent["probe"], spent["wall"], finished.seconds)
    budget = trainer.callback(Budget)
    if budget:
        timing["budget_seconds"], timing["budget"] = budget.seconds, budget.note
    console.print(f"[bold]{name}[/]: {describe_time(timing)}", highlight=False)
    result = VariantResult(name, trainer.history, groups, trainer.elapsed, run_dir, bad.skipped if bad else [],
                           trainer.stop_reason, tracker.describe() if tracker else "", timing,
                           tracker.best_epoch if tracker else 0, parts.task.default_metric,
                           parts.task.metrics.get(parts.task.default_metric, "max"), finished.test, finished.weights,
                           card_details(parts, tracker, finished), parts.parent)
    if primary:
        write_summary(result)
    return result


def room_check(spec: ExperimentSpec, files: RunDir, placement: Placement):
    """assemble's `before_data`: refuse before any image is read when the disk cannot hold the checkpoints (the
    primary measures, every process gets its verdict)."""
    def check(model, optimizer) -> None:
        problem = None
        if placement.is_primary:
            try:
                files.check_room(*checkpoint_sizes(spec, model, optimizer))
            except WriteError as exc:
                problem = str(exc)
        problem = placement.broadcast(problem)
        if problem:
            raise WriteError(problem)
    return check


def time_spent(history: list[dict], setup: float, probe: float, wall: float, final: float = 0.0) -> dict:
    """Where this process's wall time went: setup (weights, caches), probe, training steps, data wait, evaluation
    (after each epoch, and `final`: the validation fit and the test pass at the end) and its share of the wall."""
    train = sum(row["step_seconds"] for row in history)
    wait = sum(row["data_wait_seconds"] for row in history)
    per_epoch = sum(row["epoch_seconds"] - row["step_seconds"] - row["data_wait_seconds"] for row in history)
    return {"wall_seconds": wall, "setup_seconds": setup, "probe_seconds": probe, "train_step_seconds": train,
            "data_wait_seconds": wait, "evaluation_seconds": per_epoch + final,
            "epoch_evaluation_seconds": per_epoch, "final_evaluation_seconds": final,
            "evaluation_share": (per_epoch + final) / wall if wall > 0 else 0.0}


def describe_time(timing: dict) -> str:
    """'time: 312s in all: 20s setup, 15s probe, 250s training steps, 3s waiting for data, 24s evaluation (8% of
    the time: 16s after the epochs, 8s at the end)'."""
    parts = [f"{timing['setup_seconds']:.0f}s setup (weights, caches)"]
    if timing["probe_seconds"]:
        parts.append(f"{timing['probe_seconds']:.0f}s linear probe")
    share = timing.get("evaluation_share", 0.0)
    parts += [f"{timing['train_step_seconds']:.0f}s training steps", f"{timing['data_wait_seconds']:.0f}s waiting "
              f"for data", f"{timing['evaluation_seconds']:.0f}s evaluation ({share:.0%} of the time: "
              f"{timing.get('epoch_evaluation_seconds', 0.0):.0f}s after the epochs, "
              f"{timing.get('final_evaluation_seconds', 0.0):.0f}s at the end)"]
    budget = f"; {timing['budget']}" if timing.get("budget") else ""
    return f"time: {timing['wall_seconds']:.0f}s in all: {', '.join(parts)}{budget}"


def validation_noise(images: int) -> str:
    """'validation: 50 images; one image is 0.020 of accuracy, and an accuracy measured on them has a standard
    error of 0.042 near 0.90 (0.071 near 0.50)'."""
    return (f"validation: {images} images; one image is {1 / images:.3f} of accuracy, and an accuracy measured on "
            f"them has a standard error of {standard_error(0.9, images):.3f} near 0.90 "
            f"({standard_error(0.5, images):.3f} near 0.50)")


def _processes(placement: Placement) -> str:
    return f", {placement.world_size} process(es) under torchrun" if placement.distributed else ""


def _sizes(prep) -> str:
    """`224px`, or `train 160px / eval 224px` when the training crops are another size."""
    if prep.train_input_size == prep.input_size:
        return f"{prep.input_size}px"
    return f"train {prep.train_input_size}px / eval {prep.input_size}px"


def _print_header(console: Console, name: str, parts: Assembled, groups: list[dict], run_dir: Path) -> None:
    s, spec = parts.splits, parts.spec
    val = f" / {len(s.val)} val" if s.val else ""
    console.print(f"[bold]{name}[/]: {spec.backbone.name} ({parts.weights_origin}) + {spec.head.name} head, "
                  f"{len(s.classes)} {parts.task.output_kind}, {len(s.train)} train{val} / {len(s.test)} test images, "
                  f"{_sizes(parts.preprocessing)}, on {describe_device(parts.device)}, {parts.precision}"
                  f"{', channels_last' if parts.channels_last else ''}{_processes(parts.placement)} -> {run_dir}",
                  highlight=False)
    console.print(f"  {parts.plan.describe()}", highlight=False)
    if spec.task.name != "single_label":
        console.print(f"  task: {parts.task.describe()}", highlight=False)
    t = spec.train
    if parts.selection is None:
        console.print("  best.pt: the last epoch (no validation split to select on; set data.val_split, or "
                      "train.best_metric: test_accuracy to select on the test split)", highlight=False)
    elif parts.selection.startswith("test_"):
        console.print(f"  best.pt{' and early stopping' if t.early_stopping else ''}: selected on the TEST split "
                      f"({parts.selection}), as train.best_metric asks; its test metrics are then optimistic",
                      highlight=False)
    else:
        rule = rule_words(resolved_rule(t.selection), t.selection_tolerance, parts.selection)
        console.print(f"  best.pt{' and early stopping' if t.early_stopping else ''}: selected on {parts.selection}, "
                      f"{rule}", highlight=False)
    if s.val:
        console.print(f"  {validation_noise(len(s.val))}", highlight=False)
    if t.eval_test == "end":
        console.print("  test split: evaluated once, after training, with the weights best.pt holds "
                      "(train.eval_test: end)", highlight=False)
    if t.freeze_epochs:
        frozen = "epoch 1" if t.freeze_epochs == 1 else f"epochs 1-{t.freeze_epochs}"
        console.print(f"  {frozen}: head only (backbone frozen); then the whole network", highlight=False)
    for line in _feature_lines(parts):
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    for g in groups:
        console.print(f"  param group {g['name']:<24} {g['params']:>11,} params  lr {g['lr']:.3g}", highlight=False)


def _feature_lines(parts: Assembled) -> list[str]:
    """The header's lines for what changes the weights or the loss beyond the optimizer: a starting checkpoint, the
    EMA, class weights, batch mixing."""
    t, augment = parts.spec.train, parts.spec.data.augment
    lines = []
    if parts.parent:
        lines.append(f"starts from {parts.parent['checkpoint']} (epoch {parts.parent['epoch']} of its run), with a "
                     f"new optimizer and schedule")
    if t.ema:
        lines.append(f"EMA of the weights: decay {t.ema.decay:g}, evaluated beside the raw weights; best.pt keeps "
                     f"whichever scores better")
    if parts.class_weights:
        shown = ", ".join(f"{c} {w:.3g}" for c, w in list(zip(parts.splits.classes, parts.class_weights))[:8])
        more = f", ... ({len(parts.class_weights)} in data_plan.json)" if len(parts.class_weights) > 8 else ""
        how = f"auto, power {t.class_weight_power:g}" if t.class_weights == "auto" else "given"
        lines.append(f"class weights in the loss ({how}): {shown}{more}")
    mixing = [f"{name} alpha {alpha:g}" for name, alpha in (("MixUp", augment.mixup), ("CutMix", augment.cutmix))
              if alpha]
    if mixing:
        lines.append(f"batch mixing: {' or '.join(mixing)}{' (one per batch)' if len(mixing) > 1 else ''}")
    return lines
