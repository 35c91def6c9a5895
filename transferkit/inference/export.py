"""Export a checkpoint's model (ONNX fp32, fp16 or int8, OpenVINO IR, TorchScript) with normalisation and metadata
inside, check it against the PyTorch model within its format's tolerance, and only then move it into place."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferkit.errors import TransferkitError
from transferkit.files import atomic_write_text, check_room, refused, write_error
from transferkit.inference.backends import load_predictor
from transferkit.inference.batches import ImagePreparer, read_batches
from transferkit.inference.evaluate import recipe_samples
from transferkit.inference.export_formats import FORMATS, ExportFormat, export_format
from transferkit.inference.export_int8 import write_int8
from transferkit.inference.export_onnx import write_fp16, write_onnx
from transferkit.inference.export_openvino import write_openvino
from transferkit.inference.onnx_metadata import TORCHSCRIPT_METADATA, export_metadata
from transferkit.inference.torch_predictor import TorchPredictor
from transferkit.rundir import RunDir

TOLERANCE = FORMATS["onnx"].max_difference  # the lossless formats' tolerance
DEFAULT_CHECK = 64
DEFAULT_CALIBRATION = 200
EXPORT_MARGIN = 1 << 20  # the graph and the metadata beside the weights
SUFFIXES = {"onnx": ".onnx", "onnx-fp16": ".onnx", "onnx-int8": ".onnx", "openvino": ".xml"}  # how load() knows them


class ExportError(TransferkitError):
    """An export that could not be written, or that does not give the PyTorch model's answers."""


@dataclass
class ExportResult:
    """Where the export went and how closely it matched the PyTorch model."""

    path: Path
    format: str
    checked: int
    check_images: str
    max_probability_difference: float
    max_logit_difference: float
    same_labels: int
    calibrated: int = 0  # training images int8's activation ranges were measured on
    card: Path | None = None  # the run's MODEL_CARD.md beside the export (None: the run has none)

    @property
    def agreement(self) -> float:
        """The fraction of check images given PyTorch's top answer."""
        return self.same_labels / self.checked if self.checked else float("nan")

    def line(self) -> str:
        """The check in one line, with the format's tolerance."""
        if not self.checked:
            return f"{self.format}: not checked (--check 0)"
        plural = "s" if self.calibrated > 1 else ""
        calibrated = f"calibrated on {self.calibrated} training image{plural}; " if self.calibrated else ""
        return (f"{self.format}: {calibrated}checked on {self.checked} {self.check_images}: max probability "
                f"difference {self.max_probability_difference:.1e}, max logit difference "
                f"{self.max_logit_difference:.1e}, same label on {self.same_labels}/{self.checked} "
                f"(tolerance: {FORMATS[self.format].tolerance()})")


def _with_root(recipe: dict, data: str | Path | None) -> dict:
    """The recipe, reading its data from `data` instead of data.root when given (the run's folder moved)."""
    if data is None:
        return recipe
    return {**recipe, "data": {**recipe.get("data", {}), "dataset": "folder", "root": str(Path(data).expanduser())}}


def run_images(predictor: TorchPredictor, split: str, count: int, data: str | Path | None = None
               ) -> tuple[torch.Tensor, str]:
    """`count` images spread evenly over a split of the run's data (sorted by class), prepared as the model sees
    them (uint8, N, 3, S, S); DataError when that data cannot be read."""
    samples, where = recipe_samples(_with_root(predictor.checkpoint.recipe, data), split, predictor.classes)
    step = max(1, len(samples) // count)
    paths = [path for path, _ in samples[::step][:count]]
    images = [b.images for b in read_batches(paths, ImagePreparer(predictor.preprocessing), 64) if b.positions]
    if not images:
        raise TransferkitError(f"{where}: none of the {split} images could be read; check them with "
                               f"`transferkit check-data`")
    return torch.cat(images), f"{split} images from {where}"


def check_images(predictor: TorchPredictor, count: int, data: str | Path | None = None) -> tuple[torch.Tensor, str]:
    """Up to `count` of the run's test images when its data is there, else seeded random ones."""
    recipe = _with_root(predictor.checkpoint.recipe, data)
    root, table = recipe.get("data", {}).get("root"), (recipe.get("data", {}).get("labels") or {}).get("file")
    if recipe.get("data", {}).get("dataset") == "folder" and ((root and Path(root).expanduser().is_dir())
                                                              or (table and Path(table).expanduser().is_file())):
        with contextlib.suppress(TransferkitError):
            return run_images(predictor, "test", count, data)
    size = predictor.preprocessing.input_size
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator), "synthetic images"


def _torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    traced = torch.jit.trace(model, example)
    torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})


def _companions(path: Path) -> list[Path]:
    """The file and those written beside it (an OpenVINO IR's .bin)."""
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def export_size(path: Path) -> int:
    """Bytes of an export on disk, its companion files included."""
    return sum(p.stat().st_size for p in _companions(path) if p.is_file())


class Exporter:
    """Writes one checkpoint in several formats, sharing the work: the fp32 ONNX graph the ONNX and OpenVINO
    formats derive from, the check images with PyTorch's answers, and int8's calibration images."""

    def __init__(self, predictor: TorchPredictor, check: int | None = None, calibration: int | None = None,
                 data: str | Path | None = None):
        self.predictor, self.data = predictor, data
        self.check = DEFAULT_CHECK if check is None else check
        self.calibration = DEFAULT_CALIBRATION if calibration is None else calibration
        self.model = copy.deepcopy(predictor.model).cpu().float().to(memory_format=torch.contiguous_format).eval()
        size = predictor.preprocessing.input_size
        self.example = torch.randint(0, 256, (2, 3, size, size), generator=torch.Generator().manual_seed(0)).float()
        self.weights = sum(t.nbytes for t in self.model.state_dict().values())  # what a file holds, graph aside
        self._work = tempfile.TemporaryDirectory(prefix="transferkit-export-")
        self._fp32: Path | None = None
        self._reference: tuple[torch.Tensor, str, np.ndarray] | None = None

    def __enter__(self) -> "Exporter":
        return self

    def __exit__(self, *exc) -> None:
        self._work.cleanup()

    def metadata(self, fmt: str) -> dict[str, str]:
        """What the file carries: classes, preprocessing, recipe, the task and its state, the format."""
        p = self.predictor
        task = {"name": p.task.name, "state": p.task.state_dict()}
        return export_metadata(p.classes, p.preprocessing.to_dict(), p.checkpoint.recipe, task, fmt)

    def fp32_onnx(self) -> Path:
        """The fp32 ONNX export (written once, in a temporary folder)."""
        if self._fp32 is None:
            path = Path(self._work.name) / "model.onnx"
            write_onnx(self.model, self.example, path, self.metadata("onnx"))
            self._fp32 = path
        return self._fp32

    def reference(self) -> tuple[torch.Tensor, str, np.ndarray]:
        """The check images, where they came from, and the PyTorch model's logits on them."""
        if self._reference is None:
            images, where = check_images(self.predictor, self.check, self.data)
            self._reference = images, where, self.predictor.logits(images)
        return self._reference

    def _write(self, fmt: str, tmp: Path) -> int:
        """Write `fmt` to `tmp`; the number of calibration images used."""
        meta = self.metadata(fmt)
        if fmt == "torchscript":
            _torchscript(self.model, self.example, tmp, meta)
        elif fmt == "onnx":
            shutil.copyfile(self.fp32_onnx(), tmp)
        elif fmt == "onnx-fp16":
            write_fp16(self.fp32_onnx(), tmp, meta)
        elif fmt == "openvino":
            write_openvino(self.fp32_onnx(), tmp, meta)
        else:
            images, _ = run_images(self.predictor, "train", self.calibration, self.data)
            write_int8(self.fp32_onnx(), tmp, meta, images)
            return len(images)
        return 0

    def _check(self, fmt: ExportFormat, tmp: Path, path: Path, calibrated: int) -> ExportResult:
        """Compare the written file, run in its own runtime, with the PyTorch model; ExportError outside tolerance."""
        if self.check <= 0:
            return ExportResult(path, fmt.name, 0, "none", float("nan"), float("nan"), 0, calibrated)
        images, where, expected = self.reference()
        exported = load_predictor(tmp, "cpu")
        got = exported.logits(images)
        alone = exported.logits(images[:1])
        task = self.predictor.task
        if task.agreement(alone, got[:1]) > max(fmt.max_difference, 1e-4) / 10:
            raise ExportError(f"{path}: a batch of one gives other answers than the same image in a batch; the "
                              f"{fmt.name} export's batch axis is not dynamic")
        difference = task.agreement(got, expected)
        answers = [task.answer(row, 1).get("label") for row in task.answers(got)]
        wanted = [task.answer(row, 1).get("label") for row in task.answers(expected)]
        same = sum(a == b for a, b in zip(answers, wanted))
        result = ExportResult(path, fmt.name, len(images), where, difference,
                              float(np.abs(got - expected).max()), same, calibrated)
        if not (difference <= fmt.max_difference and result.agreement >= fmt.min_agreement):
            hint = ("re-run with --debug and report it" if fmt.lossless else
                    "calibrate on more images (--calibration N) or export onnx-fp16" if fmt.name == "onnx-int8" else
                    "export onnx (fp32) instead")
            raise ExportError(f"{path}: the {fmt.name} export is outside its tolerance on {len(images)} {where}: "
                              f"max probability difference {difference:.2e}, same label on {same}/{len(images)} "
                              f"(tolerance: {fmt.tolerance()}); not written; {hint}")
        return result

    def export(self, fmt: str, path: str | Path | None = None, overwrite: bool = False) -> ExportResult:
        """Write `fmt` at `path` (default: beside the checkpoint), check it, and move it into place if it agrees;
        an existing file is replaced only with `overwrite`."""
        spec = export_format(fmt)
        path = Path(path).expanduser() if path else RunDir(self.predictor.source.parent).export(fmt)
        suffix = SUFFIXES.get(fmt)
        if suffix and path.suffix.lower() != suffix:
            raise ExportError(f"--output {path}: an {fmt} export is a {suffix} file (predict and load know it by "
                              f"that); name it {path.with_suffix(suffix).name}")
        missing = spec.missing()
        if missing:
            raise ExportError(f"--format {fmt}: {missing}")
        if not overwrite and any(p.exists() for p in _companions(path)):
            raise ExportError(f"{path}: file exists; give another --output, or add --overwrite to replace it")
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            check_room(path.parent, self.weights + EXPORT_MARGIN, (path, self.weights), "--output")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit and the legacy paths announce deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    calibrated = self._write(fmt, tmp)
                except TransferkitError:
                    raise
                except OSError as exc:
                    if refused(exc):
                        raise write_error(path, self.weights, exc) from exc
                    raise ExportError(f"{path}: {fmt} export failed ({exc}); add --debug for the traceback") from exc
                except Exception as exc:  # the exporters' own errors: an operator or construct they cannot express
                    reason = " ".join(str(exc).split())[:200]
                    raise ExportError(f"{path}: {fmt} export failed ({type(exc).__name__}: {reason}); "
                                      f"add --debug for the traceback") from exc
                result = self._check(spec, tmp, path, calibrated)
            for done, final in reversed(list(zip(_companions(tmp), _companions(path)))):  # the .xml last
                os.replace(done, final)
        except OSError as exc:
            if refused(exc):
                raise write_error(path, self.weights, exc) from exc
            raise
        finally:
            for leftover in _companions(tmp):
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
        return result


def export_model(predictor: TorchPredictor, fmt: str = "onnx", path: str | Path | None = None,
                 check: int | None = None, calibration: int | None = None,
                 data: str | Path | None = None, overwrite: bool = False) -> ExportResult:
    """Write the model in `fmt`, check it on `check` images (default 64; 0 skips) and move it into place only if it
    is within the format's tolerance; onnx-int8 calibrates on `calibration` training images (default 200);
    `data` replaces the run's data folder for both; an existing file is replaced only with `overwrite`."""
    export_format(fmt)
    if calibration is not None and fmt != "onnx-int8":
        raise ExportError(f"--calibration: only onnx-int8 is calibrated; drop it for --format {fmt}")
    with Exporter(predictor, check, calibration, data) as exporter:
        result = exporter.export(fmt, path, overwrite)
    result.card = carry_card(RunDir(predictor.source.parent).card, predictor.source, result.path, fmt)
    return result


def serve_available() -> bool:
    """True when this installation has `transferkit serve` (the transferkit.serve package), which the model card
    then names beside predict."""
    import importlib.util

    return importlib.util.find_spec("transferkit.serve") is not None


def carry_card(card: Path, checkpoint: Path, exported: Path, fmt: str) -> Path | None:
    """The run's MODEL_CARD.md beside an export written outside the run's folder, with a line naming the export
    (nothing when the run has no card). A card of another model already there is kept: this one is then
    `<export file>.MODEL_CARD.md`."""
    if not card.is_file():
        return None
    if exported.parent.resolve() == card.parent.resolve():
        return card
    origin = f"`{checkpoint}`"
    serve = f" and `transferkit serve {exported}`" if serve_available() else ""
    section = (f"\n## Export: {exported.name}\n\n`{exported.name}` ({fmt}) was exported from {origin}; "
               f"`transferkit predict {exported} photo.jpg`{serve} use{'' if serve else 's'} it as the run's "
               f"checkpoint is used.\n")
    text = card.read_text()
    target = exported.parent / card.name
    if target.is_file():
        there = target.read_text()
        if origin not in there:  # another model's card: keep it
            target = exported.parent / f"{exported.name}.{card.name}"
        elif there.startswith(text):  # this model's, from an export in another format: add this one
            text = there
    if section not in text:
        text += section
    atomic_write_text(target, text)
    return target
