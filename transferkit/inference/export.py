"""Export a checkpoint's model as ONNX or TorchScript, normalisation and metadata inside, checked against PyTorch."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferkit.errors import TransferkitError
from transferkit.files import atomic_write_text, check_room, refused, write_error
from transferkit.inference.batches import ImagePreparer, read_batches
from transferkit.inference.evaluate import recipe_samples
from transferkit.inference.onnx_metadata import TORCHSCRIPT_METADATA, export_metadata
from transferkit.inference.onnx_predictor import onnxruntime
from transferkit.inference.torch_predictor import TorchPredictor
from transferkit.rundir import EXPORTS, RunDir

FORMATS = tuple(EXPORTS)
TOLERANCE = 1e-4  # largest allowed difference of any answer (probability; regression: standardised value)
DEFAULT_CHECK = 16
EXPORT_MARGIN = 1 << 20  # the graph and the metadata beside the weights


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
    card: Path | None = None  # the run's MODEL_CARD.md beside the export (None: the run has none)


def check_images(predictor: TorchPredictor, count: int) -> tuple[torch.Tensor, str]:
    """Up to `count` of the run's test images when its folder is there, else seeded random ones."""
    size = predictor.preprocessing.input_size
    data = predictor.checkpoint.recipe.get("data", {})
    root = data.get("root")
    table = (data.get("labels") or {}).get("file")
    if data.get("dataset") == "folder" and ((root and Path(root).expanduser().is_dir())
                                            or (table and Path(table).expanduser().is_file())):
        try:
            samples, where = recipe_samples(predictor.checkpoint.recipe, "test", predictor.classes)
        except TransferkitError:
            samples = []
        step = max(1, len(samples) // count)
        paths = [path for path, _ in samples[::step][:count]]
        images = [b.images for b in read_batches(paths, ImagePreparer(predictor.preprocessing), 64) if b.positions]
        if images:
            return torch.cat(images), f"test images from {where}"
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator), "synthetic images"


def _onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs onnx, onnxscript and onnxruntime; install the export extra: "
                          "pip install 'transferkit[export]'") from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["images"], output_names=["logits"],
                      dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    traced = torch.jit.trace(model, example)
    torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})


def exported_logits(path: Path, fmt: str, images: torch.Tensor) -> np.ndarray:
    """Logits of the exported file: all images as one batch, then the first alone (the batch axis is dynamic)."""
    x = images.float()
    if fmt == "onnx":
        session = onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        run = lambda batch: session.run(None, {name: batch.numpy()})[0]  # noqa: E731
    else:
        module = torch.jit.load(str(path), map_location="cpu")
        run = lambda batch: module(batch).detach().numpy()  # noqa: E731
    together = run(x)
    alone = run(x[:1])
    if not np.allclose(alone, together[:1], atol=1e-4, rtol=1e-4):
        raise ExportError(f"{path}: a batch of one gives other logits than the same image in a batch; "
                          f"the export's batch axis is not dynamic")
    return together


def export_model(predictor: TorchPredictor, fmt: str = "onnx", path: str | Path | None = None,
                 check: int | None = None, overwrite: bool = False) -> ExportResult:
    """Write the model, check it on `check` images (default 16; 0 skips) and move it into place only if it agrees;
    an existing file is replaced only with `overwrite`."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: use onnx or torchscript")
    path = Path(path).expanduser() if path else RunDir(predictor.source.parent).export(fmt)
    if path.exists() and not overwrite:
        raise ExportError(f"{path}: file exists; give another --output, or add --overwrite to replace it")
    count = DEFAULT_CHECK if check is None else check
    size = predictor.preprocessing.input_size
    model = copy.deepcopy(predictor.model).cpu().float().to(memory_format=torch.contiguous_format).eval()
    example = torch.randint(0, 256, (2, 3, size, size), generator=torch.Generator().manual_seed(0)).float()
    task = {"name": predictor.task.name, "state": predictor.task.state_dict()}
    metadata = export_metadata(predictor.classes, predictor.preprocessing.to_dict(), predictor.checkpoint.recipe, task)
    weights = sum(t.nbytes for t in model.state_dict().values())  # what the file holds, graph and metadata aside
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_room(path.parent, weights + EXPORT_MARGIN, (path, weights), "--output")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit and the legacy paths announce deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                (_onnx if fmt == "onnx" else _torchscript)(model, example, tmp, metadata)
            except ExportError:
                raise
            except OSError as exc:
                if refused(exc):
                    raise write_error(path, weights, exc) from exc
                raise ExportError(f"{path}: {fmt} export failed ({exc}); add --debug for the traceback") from exc
            except Exception as exc:  # the exporters' own errors: an operator or construct they cannot express
                reason = " ".join(str(exc).split())[:200]
                raise ExportError(f"{path}: {fmt} export failed ({type(exc).__name__}: {reason}); "
                                  f"add --debug for the traceback") from exc
            result = ExportResult(path, fmt, 0, "none", float("nan"), float("nan"), 0)
            if count > 0:
                images, where = check_images(predictor, count)
                expected = predictor.logits(images)
                got = exported_logits(tmp, fmt, images)
                p_diff = predictor.task.agreement(got, expected)
                answers = [predictor.task.answer(row, 1) for row in predictor.task.answers(got)]
                wanted = [predictor.task.answer(row, 1) for row in predictor.task.answers(expected)]
                same = sum(a.get("label") == b.get("label") for a, b in zip(answers, wanted))
                result = ExportResult(path, fmt, len(images), where, p_diff, float(np.abs(got - expected).max()), same)
                if not p_diff <= TOLERANCE:
                    raise ExportError(f"{path}: the {fmt} export differs from the PyTorch model by {p_diff:.2e} in "
                                      f"its answers on {len(images)} {where} (tolerance {TOLERANCE:.0e}); not "
                                      f"written. Re-run with --debug and report it")
        os.replace(tmp, path)
    except OSError as exc:
        if refused(exc):
            raise write_error(path, weights, exc) from exc
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    result.card = carry_card(RunDir(predictor.source.parent).card, predictor.source, path, fmt)
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
