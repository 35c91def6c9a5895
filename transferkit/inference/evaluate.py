"""Evaluate a trained model on a labelled folder: metrics, confusion matrix, top losses, misclassified files."""

from __future__ import annotations

import csv
import heapq
import io
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from rich.console import Console

from transferkit.data.folder import Samples, class_folders, scan_split, val_folder
from transferkit.data.shard_index import ShardSplits, folder_recipe, is_shard_folder, shard_splits
from transferkit.data.stream import StreamedSamples
from transferkit.errors import DataError, TransferkitError
from transferkit.files import atomic_write_bytes, atomic_write_text
from transferkit.inference.batches import ImageBatch, ImagePreparer
from transferkit.inference.explain import Explanation, top_loss_heatmaps
from transferkit.inference.feedback import feedback
from transferkit.inference.metrics import classification_metrics, log_softmax
from transferkit.inference.plots import confusion_png, reliability_png, top_losses_png
from transferkit.inference.checkpoint_io import read_checkpoint
from transferkit.inference.predictor import Predictor
from transferkit.inference.task_reports import report_for
from transferkit.inference.torch_predictor import TorchPredictor
from transferkit.recipe.spec import DataSpec
from transferkit.rundir import CHECKPOINTS, RunDir
from transferkit.tables import print_table
from transferkit.tasks import Task
from transferkit.tasks.calibration import calibration_report

SPLITS = ("test", "val")
TOP_LOSSES = 16


@dataclass
class Evaluation:
    """Metrics of one model on one labelled set, with a row per file (true, predicted, probability, loss)."""

    metrics: dict
    classes: list[str]
    rows: list[dict]
    unreadable: list[dict] = field(default_factory=list)
    task: object = None  # the predictor's Task (its report prints the evaluation)
    images: dict = field(default_factory=dict)  # the most confidently wrong rows' items by name (top_losses.png)

    @property
    def confusion(self) -> np.ndarray:
        """counts[true, predicted]."""
        return np.array(self.metrics["confusion_matrix"], dtype=np.int64)

    @property
    def misclassified(self) -> list[dict]:
        """Wrong rows, most confidently wrong (highest loss) first."""
        return sorted((r for r in self.rows if "loss" in r and r["true_label"] != r["predicted_label"]),
                      key=lambda r: -r["loss"])


def check_classes(model_classes: list[str], folder: Path, folder_classes: list[str]) -> None:
    """DataError listing the difference when a folder holds classes the model does not know (a folder with only
    some of the model's classes is fine: evaluate reports which are absent)."""
    unknown = sorted(set(folder_classes) - set(model_classes))
    if not unknown:
        return
    only_model = sorted(set(model_classes) - set(folder_classes))
    raise DataError(f"{folder}: its classes differ from the model's: only in the model: {only_model or 'none'}; "
                    f"only in the folder: {unknown}; the model cannot score classes it was not trained on: "
                    f"remove those folders, or evaluate with a model trained on them")


def absent_classes(samples: Samples, classes: list[str]) -> list[str]:
    """The model's classes no sample is labelled with (single-label samples; [] for label vectors)."""
    if isinstance(samples, StreamedSamples):
        return samples.absent_classes(classes)
    if not samples or not isinstance(samples[0][1], int):
        return []
    present = {label for _, label in samples}
    return [name for i, name in enumerate(classes) if i not in present]


def folder_split(folder: str | Path, split: str) -> Path:
    """`folder/test` (or val/, validation/, valid/) when there, else `folder` itself holding the class folders."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; give --data a folder of class sub-folders (or one with test/)")
    found = val_folder(folder) if split == "val" else folder / "test"
    return found if found is not None and found.is_dir() else folder


def table_samples(file: Path, recipe: dict, split: str, classes: list[str]) -> tuple[Samples, Path]:
    """The rows of a label table (CSV) read the way the run read its own (columns, delimiter), of `split` when
    the table has a split column, else all of them; targets in the model's output order."""
    from transferkit.data.table import scan_table
    from transferkit.recipe.spec import ExperimentSpec, LabelTableSpec
    from transferkit.tasks import task_class

    spec = ExperimentSpec.model_validate(recipe)
    own = spec.data.labels.model_dump() if spec.data.labels else {}
    scan = scan_table(LabelTableSpec(**{**own, "file": str(file)}), task_class(spec.task.name).labels_as)
    problem = scan.first_problem()
    if problem:
        raise DataError(problem)
    rows = [row for row in scan.rows if row.split in (split, "")] or scan.rows
    return _in_model_order([(row.path, row.target) for row in rows], scan.outputs, classes, file), file


def _in_model_order(samples: Samples, outputs: list[str], classes: list[str], where: Path) -> Samples:
    """Targets re-indexed to the model's classes (class indices), or checked to be its outputs (vectors)."""
    if samples and not isinstance(samples[0][1], int):
        if outputs != classes:
            raise DataError(f"{where}: its labels or targets ({', '.join(outputs)}) are not the model's "
                            f"({', '.join(classes)}); evaluate on a table with the model's columns")
        return samples
    check_classes(classes, where, outputs)
    index = {name: i for i, name in enumerate(classes)}
    return [(path, index[outputs[label]]) for path, label in samples]


def streamed_samples(splits: ShardSplits, split: str, classes: list[str]) -> tuple[StreamedSamples, str]:
    """A split of streamed shards as samples read in order (never held whole), and the index that counts them."""
    chosen = splits.split(split)
    if chosen is None:
        raise DataError(f"{splits.index_url}: the run's shards have no {split} split; use --split test")
    if splits.classes != list(classes):
        raise DataError(f"{splits.index_url}: the shards' {splits.labels} outputs ({', '.join(splits.classes)}) are "
                        f"not the model's ({', '.join(classes)}); evaluate on shards written for this model")
    return StreamedSamples(chosen.urls, chosen.counts, splits.labels, splits.classes, chosen.per_class), \
        splits.index_url


def folder_samples(folder: str | Path, split: str, classes: list[str], recipe: dict | None = None
                   ) -> tuple[Samples, Path]:
    """Labelled files of a class-per-folder set (or a label table, .csv, or the shards `transferkit shard` wrote,
    streamed), labels indexing the model's `classes`."""
    if Path(folder).suffix.lower() in (".csv", ".tsv"):
        return table_samples(Path(folder).expanduser(), recipe or {}, split, classes)
    if is_shard_folder(folder):
        section, index = folder_recipe(folder)
        data = DataSpec.model_validate(section["data"])
        return streamed_samples(shard_splits(data, index.labels), split, classes)
    split_dir = folder_split(folder, split)
    present = class_folders(split_dir)
    return _in_model_order(scan_split(split_dir, present), present, classes, split_dir), split_dir


def recipe_samples(recipe: dict, split: str, classes: list[str]) -> tuple[Samples, Path]:
    """A split of the run's data (test, val, or train for int8 calibration) read as the run read it: its dataset,
    seed and data.limit, labels indexing the model's `classes`."""
    from transferkit.data.splits import recipe_splits
    from transferkit.plugins import load_plugins
    from transferkit.recipe.spec import ExperimentSpec

    load_plugins()
    spec = ExperimentSpec.model_validate(recipe)
    try:
        splits = recipe_splits(spec)  # the same files, trim and validation split as training's
    except TransferkitError as exc:
        raise DataError(f"the run's data cannot be read ({exc}); pass --data FOLDER (in Python: a folder)") from None
    if isinstance(splits, ShardSplits):
        return streamed_samples(splits, split, classes)
    samples = {"test": splits.test, "val": splits.val, "train": splits.train}[split]
    where = Path(splits.root or spec.data.root or spec.data.dataset)
    if not samples:
        raise DataError(f"{where}: the run's data has no {split} split; use --split test or pass --data FOLDER")
    return _in_model_order(samples, splits.classes, classes, where), where


CHUNK = 1024  # samples read ahead of the model at a time: a streamed split is never held whole


def scored_chunks(predictor: Predictor, samples: Iterable) -> Iterator[tuple[list, list, ImageBatch, np.ndarray]]:
    """(items, targets, batch, logits) for each batch of `samples` ((item, target) pairs: paths, or streamed
    images), read CHUNK at a time; batch positions index the chunk's items."""
    iterator = iter(samples)
    while chunk := list(itertools.islice(iterator, CHUNK)):
        items, targets = [item for item, _ in chunk], [target for _, target in chunk]
        for batch, logits in predictor.scored_batches(items):
            yield items, targets, batch, logits


def _unreadable(items: list, batch: ImageBatch) -> list[dict]:
    return [{"path": str(items[position]), "error": error} for position, error in batch.errors.items()]


def _shard_problems(samples) -> list[dict]:
    """Streamed shards or samples that could not be read at all (no image to score), as unreadable rows."""
    return [{"path": bad.path, "error": bad.message} for bad in getattr(samples, "problems", [])]


class _TopLosses:
    """The items of the TOP_LOSSES most confidently wrong rows (ties: the earlier first), kept as they stream by so
    their pictures can be drawn without reading the data again."""

    def __init__(self):
        self.heap: list = []
        self.seen = 0

    def offer(self, loss: float, name: str, item) -> None:
        self.seen += 1
        entry = (loss, -self.seen, name, item)
        if len(self.heap) < TOP_LOSSES:
            heapq.heappush(self.heap, entry)
        elif entry[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, entry)

    def items(self) -> dict:
        return {name: item for _, _, name, item in self.heap}


def score_samples(predictor: Predictor, samples: Iterable, console: Console | None = None, progress: bool = False,
                  worst: "_TopLosses | None" = None) -> tuple[list[str], np.ndarray, list, list[dict]]:
    """The readable samples' paths (names, for streamed images), their logits and targets (in sample order), and
    the unreadable files; `samples` ((item, target) pairs, a list or a stream with len()) is read CHUNK at a time,
    and `worst` (single_label) keeps the items of the most confidently wrong as they pass."""
    console = console or Console(stderr=True, soft_wrap=True)
    temperature = float(getattr(predictor.task, "temperature", 1.0))
    logits_parts, targets, kept, unreadable = [], [], [], []
    with feedback(console, "evaluate", len(samples), progress) as bar:
        for items, chunk_targets, batch, logits in scored_chunks(predictor, samples):
            unreadable += _unreadable(items, batch)
            if batch.positions:
                logits_parts.append(logits)
                targets += [chunk_targets[p] for p in batch.positions]
                kept += [str(items[p]) for p in batch.positions]
                if worst is not None:
                    log_p = log_softmax(logits.astype(np.float64) / temperature)
                    for row, position in enumerate(batch.positions):
                        label = chunk_targets[position]
                        if int(log_p[row].argmax()) != label:
                            worst.offer(float(-log_p[row, label]), str(items[position]), items[position])
            bar.advance(batch.count)
    unreadable += _shard_problems(samples)
    if not kept:
        raise DataError(f"no readable images among the {len(samples)} to evaluate; check the files with "
                        f"`transferkit check-data`")
    return kept, np.concatenate(logits_parts), targets, unreadable


def evaluation_of(task: Task, classes: list[str], paths: list[str], logits: np.ndarray, targets: list,
                  unreadable: list[dict] | None = None) -> Evaluation:
    """The metrics and a row per file of a model's logits on labelled files (targets in the task's form).

    single_label: probabilities are the task's (softmax at its temperature, so calibrated when one was fitted);
    the loss is their NLL, and `calibration` holds NLL, ECE and reliability bins before and after the temperature.
    """
    unreadable = list(unreadable or [])
    if task.name != "single_label":  # single_label's report is this module's; the others' task_reports'
        report = report_for(task)
        all_targets = np.asarray(targets, dtype=np.float32)
        metrics = report.metrics(logits, all_targets)
        metrics["unreadable"] = unreadable
        return Evaluation(metrics, list(classes), report.rows(paths, logits, all_targets), unreadable, task)
    labels = np.asarray(targets, dtype=np.int64)
    temperature = float(getattr(task, "temperature", 1.0))
    probabilities = task.answers(logits)
    log_p = log_softmax(logits.astype(np.float64) / temperature)
    best = probabilities.argmax(axis=1)
    rows = [{"path": path, "true_label": classes[labels[i]], "predicted_label": classes[best[i]],
             "probability": float(probabilities[i, best[i]]), "true_probability": float(probabilities[i, labels[i]]),
             "loss": float(-log_p[i, labels[i]])} for i, path in enumerate(paths)]
    metrics = classification_metrics(logits.astype(np.float64) / temperature, labels, classes)
    metrics["calibration"] = calibration_report(logits, labels, temperature)
    metrics["unreadable"] = unreadable
    return Evaluation(metrics, list(classes), rows, unreadable, task)


def evaluate_samples(predictor: Predictor, samples: Iterable, console: Console | None = None,
                     progress: bool = False) -> Evaluation:
    """Predict every sample (a list, or a stream with len()) and compute the metrics; unreadable files are left out
    and listed."""
    worst = _TopLosses() if predictor.task.name == "single_label" else None
    paths, logits, targets, unreadable = score_samples(predictor, samples, console, progress, worst)
    result = evaluation_of(predictor.task, predictor.classes, paths, logits, targets, unreadable)
    result.images = worst.items() if worst else {}
    return result


def _csv(rows: list[dict] | list[list], header: list[str] | None = None) -> str:
    out = io.StringIO()
    if header is None:
        writer = csv.writer(out)
        writer.writerows(rows)
    else:
        writer = csv.DictWriter(out, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


CAPTION_CHARS = 36  # a caption line that fits its image's width in top_losses.png


def top_loss_images(predictor: Predictor, wrong: list[dict], kept: dict | None = None
                    ) -> tuple[list[np.ndarray], list[str], list[Explanation] | None]:
    """The model's view (resized, centre-cropped) of the most confidently wrong files, with captions, and the
    Grad-CAM of each one's predicted class (None for an exported model, or without the grad-cam package); `kept`:
    the items evaluation kept for them by name (streamed images), else each row's path is read."""
    kept = kept or {}
    prepare = ImagePreparer(predictor.preprocessing)
    items = [kept.get(row["path"], row["path"]) for row in wrong[:TOP_LOSSES]]
    images, captions = [], []
    for item, row in zip(items, wrong):
        images.append(prepare(item).permute(1, 2, 0).numpy())
        captions.append(loss_caption(row))
    return images, captions, top_loss_heatmaps(predictor, items)


def loss_caption(row: dict) -> str:
    """A misclassified file's caption in top_losses.png: its name, true and predicted class, probabilities; each
    line short enough for the image's width."""
    lines = (Path(row["path"]).name, f"true: {row['true_label']}", f"predicted: {row['predicted_label']}",
             f"p={row['probability']:.2f} (true {row['true_probability']:.2f})")
    return "\n".join(shortened(line) for line in lines)


def shortened(text: str, width: int = CAPTION_CHARS) -> str:
    """`text` cut in the middle to `width` characters (a file name keeps its start and its end)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head):]}"


def write_evaluation(result: Evaluation, predictor: Predictor, output: Path, title: str) -> None:
    """confusion_matrix.csv/.png, reliability.png, top_losses.png (the predictor's view of the images, and its
    Grad-CAM where it can), misclassified.csv, predictions.csv, per_class.csv, then metrics.json (another task:
    its report's files)."""
    output = Path(output)
    if "confusion_matrix" not in result.metrics:  # a task with its own report
        for name, data in report_for(result.task).files(result.metrics, result.rows, title).items():
            atomic_write_bytes(output / name, data)
        atomic_write_text(output / "predictions.csv", _csv(result.rows, list(result.rows[0])))
        atomic_write_text(output / "metrics.json", json.dumps(result.metrics, indent=2))  # last: the set is complete
        return
    classes = result.classes
    matrix = [["true \\ predicted", *classes]] + [[name, *row] for name, row in zip(classes, result.metrics["confusion_matrix"])]
    atomic_write_text(output / "confusion_matrix.csv", _csv(matrix))
    atomic_write_bytes(output / "confusion_matrix.png", confusion_png(result.confusion, classes, title))
    atomic_write_bytes(output / "reliability.png", reliability_png(result.metrics["calibration"], title))
    wrong = result.misclassified
    images, captions, explained = top_loss_images(predictor, wrong, result.images)
    heatmaps = [e.overlay if e.error is None else None for e in explained] if explained else None
    atomic_write_bytes(output / "top_losses.png", top_losses_png(images, captions, f"{title}: top losses",
                                                                 heatmaps=heatmaps))
    columns = ["path", "true_label", "predicted_label", "probability", "true_probability", "loss"]
    atomic_write_text(output / "misclassified.csv", _csv(wrong, columns))
    atomic_write_text(output / "predictions.csv", _csv(result.rows, columns))
    atomic_write_text(output / "per_class.csv", _csv(result.metrics["per_class"],
                                                     ["class", "precision", "recall", "f1", "support"]))
    atomic_write_text(output / "metrics.json", json.dumps(result.metrics, indent=2))  # last: the set is complete


def print_evaluation(result: Evaluation, console: Console, title: str) -> None:
    """The per-class table with macro and weighted averages, then loss and accuracy on one line (another task:
    its report's table and line)."""
    m = result.metrics
    if "per_class" not in m:
        report_for(result.task).print(m, console, title)
        return
    rows = [[row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"])]
            for row in m["per_class"]]
    rows.append(None)  # a section line before the averages
    for name in ("macro", "weighted"):
        avg = m[f"{name}_avg"]
        rows.append([f"{name} avg", f"{avg['precision']:.3f}", f"{avg['recall']:.3f}", f"{avg['f1']:.3f}",
                     str(avg["support"])])
    print_table(console, ["class", "precision", "recall", "f1", "support"], rows, title, right={1, 2, 3, 4})
    top5 = f", top-5 {m['top5_accuracy']:.3f}" if "top5_accuracy" in m else ""
    console.print(f"{m['images']} images: loss {m['loss']:.4f}, top-1 {m['top1_accuracy']:.3f}{top5}", highlight=False)
    console.print(calibration_line(m["calibration"]), highlight=False)


def evaluation_line(result: Evaluation) -> str:
    """'top-1 0.912, top-5 0.995, macro F1 0.905, ECE 0.021' (another task: its report's line)."""
    m = result.metrics
    if "top1_accuracy" not in m:
        return report_for(result.task).line(m)
    top5 = f", top-5 {m['top5_accuracy']:.3f}" if "top5_accuracy" in m else ""
    return f"top-1 {m['top1_accuracy']:.3f}{top5}, macro F1 {m['macro_avg']['f1']:.3f}, ECE " \
           f"{m['calibration']['after']['ece']:.3f}"


def calibration_line(c: dict) -> str:
    """'calibration: temperature 1.43; NLL 0.412 -> 0.355, ECE 0.061 -> 0.019 (15 bins)', or without a
    temperature 'calibration: NLL 0.412, ECE 0.061 (15 bins; no temperature fitted)'."""
    before, after = c["before"], c["after"]
    if c["temperature"] == 1.0:
        return f"calibration: NLL {before['nll']:.3f}, ECE {before['ece']:.3f} ({c['bins']} bins; no temperature fitted)"
    return (f"calibration: temperature {c['temperature']:.3f}; NLL {before['nll']:.3f} -> {after['nll']:.3f}, "
            f"ECE {before['ece']:.3f} -> {after['ece']:.3f} ({c['bins']} bins)")


def print_unreadable(result: Evaluation, console: Console) -> None:
    """One line per file left out because it could not be read."""
    for bad in result.unreadable:
        console.print(f"[yellow]unreadable, left out:[/] {bad['path']}: {bad['error']}", highlight=False, soft_wrap=True)


def evaluate_folder(predictor: Predictor, folder: str | Path | None, split: str = "test",
                    output: str | Path | None = None, console: Console | None = None,
                    progress: bool = False) -> Evaluation:
    """Evaluate on `folder` (or, when None, the split the run trained with); write the files when `output` is set."""
    if split not in SPLITS:
        raise TransferkitError(f"--split {split}: use test or val")
    console = console or Console(stderr=True, soft_wrap=True)
    if folder is None:
        samples, where = recipe_samples(predictor.recipe, split, predictor.classes)
    else:
        samples, where = folder_samples(folder, split, predictor.classes, predictor.recipe)
    absent = absent_classes(samples, predictor.classes)
    if absent:
        console.print(f"[yellow]{where}: {len(absent)} of the model's {len(predictor.classes)} classes absent "
                      f"({', '.join(absent)}); evaluated on the {len(predictor.classes) - len(absent)} present, "
                      f"macro averages over those[/]", highlight=False, soft_wrap=True)
    result = evaluate_samples(predictor, samples, console, progress)
    result.metrics.update(model=str(predictor.source), data=str(where), split=split, classes=predictor.classes,
                          task=predictor.task.name, absent_classes=absent)
    if output is not None:
        write_evaluation(result, predictor, Path(output), f"{predictor.source.parent.name}: {split}")
    return result


def default_output(predictor: Predictor, split: str) -> Path:
    """`<run>/evaluation/<split>/` for a run's checkpoint; `<stem>-evaluation/<split>/` beside any other model file
    (an export, a copied checkpoint), so two models in one folder never write over each other's results."""
    source = predictor.source
    if source.name in CHECKPOINTS and RunDir(source.parent).is_started:
        return RunDir(source.parent).evaluation(split)
    return source.parent / f"{source.stem}-evaluation" / split


def evaluate_run_dir(variant_dir: str | Path, split: str = "test", console: Console | None = None,
                     progress: bool = False) -> Evaluation | None:
    """Evaluate a finished variant's best checkpoint on the split it trained with, into `<variant>/evaluation/<split>/`.

    Training has already succeeded, so a problem here (no checkpoint, data gone) is printed, not raised.
    """
    console = console or Console(stderr=True, soft_wrap=True)
    variant_dir = Path(variant_dir)
    if RunDir(variant_dir).checkpoint() is None:
        console.print(f"[yellow]{variant_dir.name}: no checkpoint saved (train.checkpoint: false); not evaluated[/]")
        return None
    try:
        checkpoint = read_checkpoint(variant_dir)
        predictor = TorchPredictor(checkpoint, device=checkpoint.recipe.get("train", {}).get("device", "auto"))
        output = default_output(predictor, split)
        result = evaluate_folder(predictor, None, split, output, console, progress and console.is_terminal)
    except TransferkitError as exc:
        console.print(f"[yellow]{variant_dir.name}: evaluation skipped: {exc}[/]", highlight=False, soft_wrap=True)
        return None
    console.print(f"[bold]{variant_dir.name}[/]: best checkpoint on {split}: {evaluation_line(result)} -> {output}",
                  highlight=False, soft_wrap=True)
    print_unreadable(result, console)
    return result
