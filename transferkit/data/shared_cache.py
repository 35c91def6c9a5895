"""A cache folder that several runs share (the trials of a `transferkit tune` study): decoded images and a frozen
backbone's features kept on disk there, so a run reuses what an earlier run, or another process, computed.

Off unless a caller opens one with `shared_caches(folder)`. Inside it, `data.cache: auto` keeps decoded images on
disk under the folder (memory-mapped: processes share the pages, and the next run skips decoding) rather than in
each run's own memory, and feature caches (`lr_policy.feature_cache`, `train.probe_epochs`) are stored there under
a key of everything they depend on (data/features.py). A file lock per entry makes a second process wait for the
first one's result instead of computing it again.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_FOLDER: list[Path] = []  # the open shared folders, innermost last


@contextmanager
def shared_caches(folder: str | Path) -> Iterator[Path]:
    """Runs started inside this block keep and reuse their decoded images and features in `folder`."""
    path = Path(folder).absolute()
    path.mkdir(parents=True, exist_ok=True)
    _FOLDER.append(path)
    try:
        yield path
    finally:
        _FOLDER.pop()


def shared_folder() -> Path | None:
    """The shared cache folder runs are in now, or None."""
    return _FOLDER[-1] if _FOLDER else None


def digest(parts: list[Any]) -> str:
    """A short hex key of plain values: str, numbers, bytes, and lists or tuples of them (bytes hashed as they
    are, so a network's weights need no text form)."""
    h = hashlib.sha256()

    def feed(part: Any) -> None:
        if isinstance(part, (list, tuple)):
            h.update(b"[")
            for item in part:
                feed(item)
            h.update(b"]")
        else:
            h.update(part if isinstance(part, bytes) else repr(part).encode())
            h.update(b"\0")

    feed(parts)
    return h.hexdigest()[:24]


def stored(kind: str, key: str, compute: Callable[[], Any], save: Callable[[Path, Any], None],
           load: Callable[[Path], Any]) -> Any:
    """The entry `kind/key` of the shared folder: loaded when there, else computed and saved (once: a second
    process waits on the entry's lock and then loads it). Computed without storing when no folder is open."""
    folder = shared_folder()
    if folder is None:
        return compute()
    entry = folder / kind / f"{key}.pt"
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if entry.is_file():
            try:
                return load(entry)
            except Exception:  # written atomically, so only a format from another version: computed again
                pass
        value = compute()
        save(entry, value)
        return value
