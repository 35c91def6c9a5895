"""The end of a variant: the selected weights (best.pt, else last.pt, else the model as training left it) are
loaded, fitted to the validation split (validation_fit), then evaluated on the test split once, and that pass's
logits make the report in evaluation/test/ (per-class table, confusion matrix, calibration, top losses)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from transferkit.callbacks.checkpoint import load_checkpoint
from transferkit.data.shard_index import ShardSplits
from transferkit.inference.evaluate import absent_classes, evaluation_line, evaluation_of, write_evaluation
from transferkit.inference.torch_predictor import TorchPredictor
from transferkit.model.checkpoint_format import SavedModel
from transferkit.run.assemble import Assembled
from transferkit.run.validation_fit import fit_task_to_validation
from transferkit.rundir import RunDir


@dataclass
class Finished:
    """What the end of a variant measured: the selected weights' test metrics (`test_accuracy`, ...), where they
    came from, the seconds the validation fit and the test pass took (the report's files apart), and whether
    evaluation/test/ was written."""

    test: dict
    weights: str
    seconds: float
    report_written: bool
    report_seconds: float = 0.0


def load_selected(parts: Assembled, run_dir: Path) -> tuple[dict | None, Path | None]:
    """Load the weights the run selected into the model: best.pt, else last.pt (None, None when no checkpoint
    was saved: the model keeps its last weights). The primary reads the file and hands it to the others."""
    placement = parts.placement
    found = RunDir(run_dir).checkpoint() if placement.is_primary and parts.spec.train.checkpoint else None
    path = placement.broadcast(found)
    saved = placement.broadcast(load_checkpoint(path) if placement.is_primary and path else None)
    if saved is not None:
        parts.trainer.model.load_state_dict(saved["model"])
    return saved, path


def report_predictor(parts: Assembled, path: Path) -> TorchPredictor:
    """A PyTorch predictor of the weights now in the model, as `transferkit evaluate` would load them (the report's
    top-losses grid shows its view of the images, and its Grad-CAM), on the CPU."""
    task = {"name": parts.task.name, "state": parts.task.state_dict()}
    state = {k: v.detach().cpu() for k, v in parts.trainer.model.state_dict().items()}
    saved = SavedModel(path, state, list(parts.splits.classes), parts.preprocessing,
                       parts.spec.model_dump(mode="json"), task)
    return TorchPredictor(saved, "cpu")


def finish_variant(parts: Assembled, run_dir: Path, console: Console, report: bool = True) -> Finished:
    """Validation fit, then the one test pass of the selected weights (with test-time flip under train.tta_flip);
    every process runs it, the primary writes the report (under several processes the logits come back out of
    sample order, and streamed shards list no test images, so then `report_written` is False and the experiment
    evaluates the checkpoint instead); `report=False`: no report."""
    started = time.perf_counter()
    trainer, placement, task = parts.trainer, parts.placement, parts.task
    saved, path = load_selected(parts, run_dir)
    fit_task_to_validation(parts, saved, path, console)
    trainer.notify("before_evaluate", "test")
    logits, targets, bad = trainer.predict(parts.eval_loaders["test"], "test (selected weights)",
                                           flip="test" in trainer.flip_splits)
    all_logits, all_targets = trainer.gathered(logits, targets)
    test = {f"test_{name}": value for name, value in task.epoch_metrics(all_logits, all_targets).items()}
    trainer.notify("after_evaluate", "test", test)
    seconds = time.perf_counter() - started
    weights = f"{path.name} ({saved.get('weights', 'raw')} weights, epoch {saved.get('epoch')})" if saved else \
        "the last epoch's weights (no checkpoint saved)"
    written = False
    streamed = isinstance(parts.splits, ShardSplits)  # its test images are not listed: evaluate streams the checkpoint
    if report and placement.is_primary and not placement.distributed and not streamed:
        skipped = {item.path for item in bad}
        samples = [(str(p), target) for p, target in parts.splits.test if str(p) not in skipped]
        expected = np.asarray([target for _, target in samples], dtype=np.float64)
        if expected.shape == tuple(targets.shape) and np.allclose(expected, targets.double().numpy()):
            evaluation = evaluation_of(task, parts.splits.classes, [p for p, _ in samples], logits.numpy(),
                                       [target for _, target in samples],
                                       [{"path": item.path, "error": item.message} for item in bad])
            output = RunDir(run_dir).evaluation("test")
            evaluation.metrics.update(model=str(path) if path else str(run_dir), data=str(parts.splits.root or ""),
                                      split="test", classes=parts.splits.classes, task=task.name,
                                      absent_classes=absent_classes(samples, parts.splits.classes),
                                      weights=weights, tta_flip="test" in trainer.flip_splits)
            write_evaluation(evaluation, report_predictor(parts, path or RunDir(run_dir).best), output,
                             f"{run_dir.name}: test")
            console.print(f"[bold]{run_dir.name}[/]: {weights} on test: {evaluation_line(evaluation)} -> {output}",
                          highlight=False, soft_wrap=True)
            written = True
    return Finished(test, weights, seconds, written, time.perf_counter() - started - seconds)
