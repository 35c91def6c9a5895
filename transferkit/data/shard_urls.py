"""Shard URLs: brace patterns expanded (webdataset's expand_urls), and local paths or any fsspec URL opened for reading.

Local paths (and file://) are opened directly; http(s)://, s3://, gs://, ... go through fsspec, which needs the
protocol's package (aiohttp for http, s3fs for s3, gcsfs for gs). Nothing here imports torch.
"""

from __future__ import annotations

import io
import posixpath
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from transferkit.errors import DataError

SHARDS_EXTRA = "pip install 'transferkit[shards]'"
REMOTE_BUFFER = 1 << 20  # bytes read from a remote shard at a time


def webdataset_module():
    """The webdataset package, or DataError with the install line."""
    try:
        import webdataset
    except ImportError:
        raise DataError(f"data.source: webdataset needs the webdataset package; {SHARDS_EXTRA}") from None
    return webdataset


def protocol(url: str) -> str:
    """'file' for a local path or file:// URL, else the URL's scheme (http, https, s3, gs, ...)."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    return scheme or "file"


def local_path(url: str) -> Path:
    """The file a local path or file:// URL names."""
    return Path(urlsplit(url).path) if url.startswith("file://") else Path(url).expanduser()


def expand(urls: str | list[str]) -> list[str]:
    """Every shard URL of a brace pattern (train-{000000..000009}.tar) or a list of them, in order."""
    patterns = [urls] if isinstance(urls, str) else list(urls)
    expand_urls = webdataset_module().shardlists.expand_urls
    return [url for pattern in patterns for url in expand_urls(pattern)]


def missing_protocol(url: str) -> str | None:
    """What is missing to open `url` (fsspec or the package of its protocol), as a message with the fix; None
    when it can be opened."""
    name = protocol(url)
    if name == "file":
        return None
    try:
        import fsspec
    except ImportError:
        return f"{name}:// URLs are read through fsspec; {SHARDS_EXTRA}"
    try:
        fsspec.get_filesystem_class(name)
    except ValueError:
        return f"fsspec knows no '{name}' protocol; use a local path, http(s):// or an fsspec URL (s3://, gs://, ...)"
    except ImportError as exc:
        return f"{name}:// URLs need fsspec's {name} package ({str(exc).splitlines()[0]})"
    return None


def open_url(url: str):
    """A binary file object reading `url` from its start (close it when done); OSError/DataError when unreachable."""
    if protocol(url) == "file":
        return open(local_path(url), "rb")
    import fsspec

    # http(s): one streaming GET (block_size 0), read front to back, so servers without range requests work too
    options = {"block_size": 0} if protocol(url) in ("http", "https") else {}
    # a large buffer: tar reads 10 kB at a time, and each fsspec read is a round trip to its event loop thread
    return io.BufferedReader(fsspec.open(url, "rb", **options).open(), buffer_size=REMOTE_BUFFER)


def read_bytes(url: str) -> bytes:
    """The whole content of `url` (a small file: an index)."""
    with open_url(url) as handle:
        return handle.read()


def reason_of(exc: BaseException) -> str:
    """A short reason for a failed read: the HTTP status or the socket's error under fsspec's FileNotFoundError,
    else the exception's own text."""
    seen = exc
    while seen is not None:
        status = getattr(seen, "status", None)
        if isinstance(status, int):
            return f"HTTP {status} {getattr(seen, 'message', '') or ''}".strip()
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror if not isinstance(seen, FileNotFoundError) else "not found"
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, FileNotFoundError):
        return "not found"
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def unreachable(url: str) -> str | None:
    """Why `url` cannot be read (one short reason), or None when it can."""
    problem = missing_protocol(url)
    if problem:
        return problem
    try:
        if protocol(url) == "file":
            path = local_path(url)
            if not path.is_file():
                return "no such file" if not path.exists() else "not a file"
            return None
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        fs.info(path)
    except Exception as exc:  # any transport error (refused connection, timeout, 403) is the same fault to the user
        return reason_of(exc)
    return None


def first_unreachable(urls: list[str], threads: int = 16) -> tuple[str, str] | None:
    """(url, reason) of the first URL that cannot be read (remote ones asked in parallel), or None."""
    if not urls:
        return None
    local = all(protocol(url) == "file" for url in urls)
    with ThreadPoolExecutor(1 if local else min(threads, len(urls))) as pool:
        for url, reason in zip(urls, pool.map(unreachable, urls)):
            if reason:
                return url, reason
    return None


def beside(url: str, name: str) -> str:
    """The URL of file `name` in the same folder as `url` (the index beside a shard)."""
    if protocol(url) == "file" and not url.startswith("file://"):
        return str(Path(url).expanduser().parent / name)
    parts = urlsplit(url)
    return parts._replace(path=posixpath.join(posixpath.dirname(parts.path), name), query="", fragment="").geturl()


def base_name(url: str) -> str:
    """The file name a URL ends in: train-000003.tar."""
    return posixpath.basename(urlsplit(url).path) if "://" in url else Path(url).name
