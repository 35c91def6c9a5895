"""Run directories: atomic file writes, metrics, checkpoints."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from transferkit.errors import TransferkitError
from transferkit.weights_io import safe_torch_load


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic write of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(path: Path, obj: Any) -> None:
    """torch.save into memory, then an atomic write: a crash never leaves a half-written checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.json and metrics.csv, one row per epoch."""
    atomic_write_text(run_dir / "metrics.json", json.dumps(history, indent=2))
    if not history:
        return
    columns = list(dict.fromkeys(key for row in history for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / "metrics.csv", out.getvalue())


def prepare_run_dir(path: Path) -> Path:
    """Create the run directory, with a clear error when it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TransferkitError(f"output_dir: {path} is not a writable directory ({exc.strerror}); "
                               f"set output_dir in the recipe or pass --output DIR") from None
    return path


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by transferkit, loaded with weights_only=True."""
    state = safe_torch_load(path)
    if not isinstance(state, dict) or "model" not in state:
        raise TransferkitError(f"{path}: not a transferkit checkpoint (no 'model' entry)")
    return state
