"""`transferkit benchmark`: one model in every export format, side by side in one process: file size, batch-1
latency, images/s at a full batch, accuracy on labelled images and agreement with the fp32 PyTorch model.

Speed is measured in alternating rounds (each format in turn, round after round), so a change in the machine's
load during the run falls on every format alike and the ratios between them hold.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from transferkit.errors import TransferkitError
from transferkit.inference.backends import load_predictor
from transferkit.inference.batches import ImagePreparer, read_batches
from transferkit.inference.evaluate import folder_samples, recipe_samples
from transferkit.inference.export import Exporter, export_size
from transferkit.inference.export_formats import FORMATS
from transferkit.inference.feedback import feedback
from transferkit.inference.predictor import Predictor
from transferkit.inference.torch_predictor import TorchPredictor

REFERENCE = "pytorch"  # the checkpoint run by PyTorch eager in fp32: what every format is compared with
ALL_FORMATS = (REFERENCE, *FORMATS)


@dataclass
class BenchmarkSettings:
    """What to measure and how long."""

    formats: list[str] = field(default_factory=lambda: list(ALL_FORMATS))
    data: str | None = None  # labelled images (class folders, or a folder with test/); default the run's test split
    limit: int | None = None  # at most this many of them, evenly spread
    batch: int = 32  # the throughput batch
    rounds: int = 6  # alternating rounds: each format's batch-1 calls, then one full batch, format after format
    calls_per_round: int = 10  # batch-1 calls per format and round
    check: int | None = None  # export check images (default: export's)
    calibration: int | None = None  # int8 calibration images (default: export's)


@dataclass
class FormatRow:
    """One format's figures, or why it has none (a runtime not installed, an export refused)."""

    format: str
    status: str = "ok"  # ok, missing, refused
    note: str = ""  # the install line, or the refusal
    file: str | None = None
    size_bytes: int | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    images_per_s: float | None = None
    accuracy: float | None = None
    agreement: float | None = None  # fraction of images with the fp32 PyTorch model's top answer
    max_probability_difference: float | None = None
    export_check: str | None = None
    calibration_images: int = 0


@dataclass
class BenchmarkResult:
    """Every row, with what was measured on what."""

    rows: list[FormatRow]
    model: str
    data: str
    images: int
    settings: BenchmarkSettings
    threads: int
    seconds: float
    output: Path  # where the exports, benchmark.json, .md and .png go

    def to_dict(self) -> dict:
        """Plain data for benchmark.json."""
        return {"model": self.model, "data": self.data, "images": self.images, "threads": self.threads,
                "cpu_count": os.cpu_count(), "seconds": round(self.seconds, 1), "load_average": os.getloadavg(),
                "settings": asdict(self.settings), "rows": [asdict(r) for r in self.rows]}


def parse_formats(values: list[str] | None) -> list[str]:
    """Format names from repeated and comma-separated values (default: all), checked against the known ones."""
    names = [n.strip() for v in (values or []) for n in v.split(",") if n.strip()] or list(ALL_FORMATS)
    unknown = [n for n in names if n not in ALL_FORMATS]
    if unknown:
        raise TransferkitError(f"--formats {','.join(unknown)}: use some of {', '.join(ALL_FORMATS)}")
    return list(dict.fromkeys(names))


def labelled_images(predictor: TorchPredictor, data: str | None, limit: int | None
                    ) -> tuple[torch.Tensor, np.ndarray, str]:
    """The images the accuracy is measured on, prepared as the model sees them, their targets, and where they are."""
    if data is None:
        samples, where = recipe_samples(predictor.recipe, "test", predictor.classes)
    else:
        samples, where = folder_samples(data, "test", predictor.classes, predictor.recipe)
    if limit and len(samples) > limit:
        samples = samples[::len(samples) // limit][:limit]
    images, targets = [], []
    for batch in read_batches([p for p, _ in samples], ImagePreparer(predictor.preprocessing), 64):
        if batch.positions:
            images.append(batch.images)
            targets += [samples[p][1] for p in batch.positions]
    if not images:
        raise TransferkitError(f"{where}: no readable images to benchmark on; check them with `transferkit check-data`")
    return torch.cat(images), np.asarray(targets), str(where)


def _all_logits(predictor: Predictor, images: torch.Tensor, batch: int) -> np.ndarray:
    return np.concatenate([predictor.logits(part) for part in images.split(batch)])


def _timed(predictor: Predictor, images: torch.Tensor) -> float:
    started = time.perf_counter()
    predictor.logits(images)
    return time.perf_counter() - started


def measure_speed(predictors: dict[str, Predictor], images: torch.Tensor, settings: BenchmarkSettings,
                  bar) -> dict[str, dict]:
    """Batch-1 latency (p50, p99, ms) and images/s at `settings.batch`, every format in turn, round after round."""
    one = images[:1]
    full = images[:settings.batch]
    if len(full) < settings.batch:  # fewer labelled images than the batch: repeat them
        full = full.repeat((settings.batch + len(full) - 1) // len(full), 1, 1, 1)[:settings.batch]
    for predictor in predictors.values():  # warm-up: first calls allocate, compile and pick kernels
        predictor.logits(full)
        predictor.logits(one)
    latencies = {name: [] for name in predictors}
    batch_times = {name: [] for name in predictors}
    for _ in range(settings.rounds):
        for name, predictor in predictors.items():
            latencies[name] += [_timed(predictor, one) for _ in range(settings.calls_per_round)]
            batch_times[name].append(_timed(predictor, full))
            bar.advance(1)
    return {name: {"latency_p50_ms": float(np.percentile(latencies[name], 50) * 1e3),
                   "latency_p99_ms": float(np.percentile(latencies[name], 99) * 1e3),
                   "images_per_s": float(settings.batch / np.median(batch_times[name]))} for name in predictors}


def export_all(exporter: Exporter, formats: list[str], output: Path, console: Console
               ) -> tuple[dict[str, FormatRow], dict[str, Path]]:
    """Each export format written into `output` and checked; a missing runtime or a refused export is a row
    saying so."""
    rows, files = {}, {}
    for name in formats:
        if name == REFERENCE:
            continue
        spec = FORMATS[name]
        missing = spec.missing()
        if missing:
            rows[name] = FormatRow(name, "missing", missing)
            continue
        console.print(f"exporting {name} ...", highlight=False)
        try:
            result = exporter.export(name, output / spec.file, overwrite=True)  # the benchmark's own folder
        except TransferkitError as exc:
            rows[name] = FormatRow(name, "refused", " ".join(str(exc).split()))
            continue
        rows[name] = FormatRow(name, file=str(result.path), size_bytes=export_size(result.path),
                               export_check=result.line(), calibration_images=result.calibrated)
        files[name] = result.path
    return rows, files


def run_benchmark(model: str | Path, output: str | Path | None = None, settings: BenchmarkSettings | None = None,
                  console: Console | None = None, progress: bool = False) -> BenchmarkResult:
    """Export the checkpoint at `model` in each format into `output` (default `<run>/benchmark/`), then measure every
    format on the same images in one process."""
    from transferkit.inference.checkpoint_io import read_checkpoint

    settings = settings or BenchmarkSettings()
    settings.formats = parse_formats(settings.formats)
    console = console or Console(stderr=True, soft_wrap=True)
    started = time.perf_counter()
    reference = TorchPredictor(read_checkpoint(model), "cpu")
    output = Path(output) if output else reference.source.parent / "benchmark"
    images, targets, where = labelled_images(reference, settings.data, settings.limit)
    with Exporter(reference, settings.check, settings.calibration) as exporter:  # check, calibrate: the run's data
        rows, files = export_all(exporter, settings.formats, output, console)
    predictors: dict[str, Predictor] = {}
    if REFERENCE in settings.formats:
        rows[REFERENCE] = FormatRow(REFERENCE, file=str(reference.source), size_bytes=reference.source.stat().st_size)
        predictors[REFERENCE] = reference
    predictors.update({name: load_predictor(path, "cpu", settings.batch) for name, path in files.items()})

    task = reference.task
    expected = _all_logits(reference, images, settings.batch)
    wanted = [task.answer(row, 1).get("label") for row in task.answers(expected)]
    with feedback(console, "accuracy", len(predictors), progress) as bar:
        for name, predictor in predictors.items():
            got = expected if predictor is reference else _all_logits(predictor, images, settings.batch)
            answers = [task.answer(row, 1).get("label") for row in task.answers(got)]
            row = rows[name]
            row.agreement = float(np.mean([a == b for a, b in zip(answers, wanted)]))
            row.max_probability_difference = float(task.agreement(got, expected))
            if task.name == "single_label":
                row.accuracy = float(np.mean(got.argmax(axis=1) == targets))
            bar.advance(1)
    with feedback(console, "speed", settings.rounds * len(predictors), progress) as bar:
        for name, figures in measure_speed(predictors, images, settings, bar).items():
            for key, value in figures.items():
                setattr(rows[name], key, value)
    ordered = [rows[name] for name in settings.formats if name in rows]
    return BenchmarkResult(ordered, str(reference.source), where, len(images), settings, torch.get_num_threads(),
                           time.perf_counter() - started, output)
