"""File writes: atomic (a crash or Ctrl-C never leaves a half-written file in place of a good one), and a write the
disk refuses (full, read-only, permission denied) is a one-line WriteError naming the file and the room there."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import tempfile
from pathlib import Path
from typing import Any

from transferkit.errors import WriteError

# what the file system says when the fault is the place written to, not the program
REFUSED = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
           errno.EISDIR, errno.ENOENT}
FIXES = {errno.ENOSPC: "free some space or write to another disk", errno.EDQUOT: "free some of your quota or "
         "write to another disk", errno.EFBIG: "raise the file-size limit or write elsewhere"}
OTHER_FIX = "choose a folder you can write to"


def size(n: int | None) -> str:
    """'45,678,912 bytes (45.7 MB)'."""
    if n is None:
        return "an unknown number of bytes"
    return f"{n:,} bytes ({n / 1e6:.1f} MB)" if n >= 100_000 else f"{n:,} bytes"


def existing_folder(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (where a new file's room is measured)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path if path.is_dir() else path.parent


def free_bytes(path: Path) -> int:
    """Bytes this process may still write on the file system holding `path` (root may use the reserved blocks)."""
    stats = os.statvfs(existing_folder(path))
    blocks = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail
    return blocks * stats.f_frsize


def file_size_limit() -> int | None:
    """The largest file this process may write (RLIMIT_FSIZE, `ulimit -f`), or None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def _room(path: Path) -> str:
    free = size(free_bytes(path)) if existing_folder(path).exists() else "no"
    limit = file_size_limit()
    return f"{free} free there" + (f", files limited to {size(limit)} (ulimit -f)" if limit is not None else "")


def write_error(path: Path, needed: int | None, exc: OSError) -> WriteError:
    """The one-line error for a refused write of `needed` bytes to `path`: the reason, the room there, the fix."""
    reason = exc.strerror or type(exc).__name__
    fix = FIXES.get(exc.errno, OTHER_FIX)
    what = f"cannot write {size(needed)}" if needed is not None else "cannot create the file"
    return WriteError(f"{path}: {what} ({reason}); {_room(path)}; {fix}")


def refused(exc: BaseException) -> bool:
    """True for an OSError the place written to causes (full, read-only, not ours, not a folder)."""
    return isinstance(exc, OSError) and exc.errno in REFUSED


def check_room(folder: Path, needed: int, largest: tuple[Path, int], setting: str) -> None:
    """WriteError, before any work, when `folder`'s file system has under `needed` bytes free or the largest file
    to write is over the file-size limit; `setting` names where the user chooses the folder."""
    free, limit = free_bytes(folder), file_size_limit()
    name, biggest = largest
    if limit is not None and biggest > limit:
        raise WriteError(f"{setting}: {name} will need about {size(biggest)}, over this process's file-size limit "
                         f"of {size(limit)} (ulimit -f); raise the limit or write elsewhere")
    if free < needed:
        raise WriteError(f"{setting}: {existing_folder(folder)} has {size(free)} free and this run needs about "
                         f"{size(needed)} ({name.name} about {size(biggest)}, written beside the copy it replaces); "
                         f"free some space or set {setting} to a disk with room")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path`; on failure the temp file
    is removed and what was at `path` stays."""
    with atomic_file(path, len(data)) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_file(path: Path, needed: int | None = None):
    """A binary file to write `path` through: a temp file beside it, fsynced and renamed over `path` once the block
    ends without error (streamed, for files too large to hold in memory); on failure the temp file is removed and
    a refused write is a WriteError (`needed`: the bytes it was to hold, when known)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        if refused(exc):
            raise write_error(path, needed, exc) from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic write of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(path: Path, obj: Any) -> None:
    """torch.save streamed into a temp file renamed over `path`: a crash never leaves a half-written checkpoint, and
    no copy of the checkpoint is held in memory (a buffer and its copy once cost a ResNet-18 run 270 MB of peak RSS)."""
    import torch  # here, not at the top: writing text files (schema, recipes) needs no torch

    with atomic_file(path, _tensor_bytes(obj)) as handle:
        writer = _WriteErrorKeeper(handle)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:  # torch reports a refused write as its own RuntimeError: name the cause
                raise writer.error from None
            raise


def _tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in nested dicts, lists and tuples: about what torch.save writes of them."""
    if isinstance(obj, dict):
        return sum(_tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(value) for value in obj)
    nbytes = getattr(obj, "nbytes", 0)  # tensors and arrays
    return nbytes if isinstance(nbytes, int) else 0


class _WriteErrorKeeper:
    """A file's write method that remembers the OSError it raised."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()
