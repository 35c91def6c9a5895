"""Run directories: the writable-folder check."""

from __future__ import annotations

from pathlib import Path

from transferkit.errors import TransferkitError


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
