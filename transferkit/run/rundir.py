"""Run directories: metrics files, the writable-folder check, reading checkpoints back."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from transferkit.errors import TransferkitError
from transferkit.files import atomic_write_text
from transferkit.model.weights_io import safe_torch_load


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
