"""Fetch data sets into a local cache: atomic, hash-verified downloads and safe zip extraction.

A download streams into a `.part` file beside its destination, is hashed while it streams, and is
renamed into place only once its length and hash check out, so the destination either is complete
and verified or does not exist. `fetch_and_extract` keeps the verified zip next to the extracted
folder, so a later re-extract (after the folder was deleted) needs no network; an unverified file is
never kept.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath
from urllib.error import HTTPError

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from transferkit.errors import DownloadError

HOTDOG_URL = "http://d2l-data.s3-accelerate.amazonaws.com/hotdog.zip"
HOTDOG_SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"

TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 20


def data_cache_dir() -> Path:
    """The data cache folder: `TRANSFERKIT_DATA`, or `~/.cache/transferkit`."""
    return Path(os.environ.get("TRANSFERKIT_DATA") or Path.home() / ".cache" / "transferkit").expanduser()


def download_file(
    url: str,
    dest: Path,
    sha1: str | None = None,
    sha256: str | None = None,
    offline_hint: str = "",
    progress: bool = True,
) -> Path:
    """Download `url` to `dest` atomically, verifying its hash; reuse a matching `dest` without network."""
    dest = Path(dest)
    expected = {name: value.lower() for name, value in (("sha1", sha1), ("sha256", sha256)) if value}
    if dest.is_file() and _hashes_of(dest, expected) == expected:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, part_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    part = Path(part_name)
    try:
        hashers = {name: hashlib.new(name) for name in expected}
        with os.fdopen(fd, "wb") as out, _progress_bar(progress) as bar:
            task = bar.add_task(dest.name, total=None)
            for total, chunk in _read_chunks(url, dest, offline_hint):
                out.write(chunk)
                for hasher in hashers.values():
                    hasher.update(chunk)
                bar.update(task, total=total, advance=len(chunk))
        for name, hasher in hashers.items():
            if hasher.hexdigest() != expected[name]:
                raise DownloadError(
                    f"{url}: {name} of the download is {hasher.hexdigest()}, expected {expected[name]}; "
                    "nothing was kept, check the URL and the expected hash, then retry"
                )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def safe_extract_zip(archive: Path, dest: Path) -> None:
    """Extract `archive` into `dest` once every member is checked to be a plain file or folder."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                _check_member(archive, info)
            for info in members:
                zf.extract(info, dest)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{archive}: not a valid zip file ({err}); delete it and download again") from err


def fetch_and_extract(
    url: str, sha1: str, name: str, offline_hint: str = "", cache_dir: Path | None = None
) -> Path:
    """Return `cache_dir/name`, downloading and extracting the zip at `url` into it on first use."""
    cache_dir = Path(cache_dir) if cache_dir is not None else data_cache_dir()
    target = cache_dir / name
    if target.is_dir():  # only ever created by the rename below, so it is complete
        return target
    archive = download_file(url, cache_dir / f"{name}.zip", sha1=sha1, offline_hint=offline_hint)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir))
    try:
        safe_extract_zip(archive, tmp)
        # an archive holding the single folder `name` (like hotdog.zip) becomes the folder itself
        root = tmp / name if [p.name for p in tmp.iterdir()] == [name] and (tmp / name).is_dir() else tmp
        try:
            os.replace(root, target)
        except OSError:
            if not target.is_dir():  # otherwise a concurrent process finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _read_chunks(url: str, dest: Path, offline_hint: str) -> Iterator[tuple[int | None, bytes]]:
    """Yield (Content-Length or None, chunk) from `url`, turning network failures into DownloadError."""
    hint = f", {offline_hint}" if offline_hint else ""
    received, total = 0, None
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            while chunk := response.read(CHUNK_BYTES):
                received += len(chunk)
                yield total, chunk
    except (OSError, http.client.HTTPException) as err:  # URLError, HTTPError and timeouts are OSErrors
        reason = getattr(err, "reason", err)  # URLError wraps the cause; HTTPError's reason lacks the code
        if isinstance(err, HTTPError):
            reason = f"HTTP {err.code} {err.reason}"
        raise DownloadError(
            f"cannot download {url} ({str(reason) or type(reason).__name__}); check the network and the URL, "
            f"or work offline by placing a verified copy at {dest}{hint}"
        ) from err
    if total is not None and received != total:
        raise DownloadError(
            f"{url}: connection closed after {received} of {total} bytes; nothing was kept, retry{hint}"
        )


def _hashes_of(path: Path, names: dict[str, str]) -> dict[str, str]:
    """Hex digests of the file at `path` for each hash name in `names`."""
    hashers = {name: hashlib.new(name) for name in names}
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def _check_member(archive: Path, info: zipfile.ZipInfo) -> None:
    """Raise DownloadError unless `info` is a regular file or folder with a relative path staying inside."""
    path = PureWindowsPath(info.filename)  # parses both '/' and '\\' separators, drives and UNC roots
    if path.anchor or ".." in path.parts:
        problem = "is an absolute path or contains '..'"
    elif stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG, stat.S_IFDIR):
        problem = "is a link or special file"
    else:
        return
    raise DownloadError(f"{archive}: member {info.filename!r} {problem}; refused, use a trusted archive")


def _progress_bar(enabled: bool) -> Progress:
    """A Rich download progress bar on stderr, hidden when `enabled` is false."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    )
