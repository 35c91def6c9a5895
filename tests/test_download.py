"""Downloads and extraction against a local HTTP server: caching, hash checks, unsafe archives, failures."""

from __future__ import annotations

import hashlib
import shutil
import socket
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from transferkit import download
from transferkit.download import download_file, fetch_and_extract, safe_extract_zip
from transferkit.errors import DownloadError
from transferkit.testing import LocalServer, make_zip

HOTDOG_FILES = {
    "hotdog/train/hotdog/a.png": b"train hotdog",
    "hotdog/train/not-hotdog/b.png": b"train not hotdog",
    "hotdog/test/hotdog/c.png": b"test hotdog",
    "hotdog/test/not-hotdog/d.png": b"test not hotdog",
}


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "TIMEOUT_S", 5.0)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


@pytest.fixture
def hotdog_zip(tmp_path: Path) -> tuple[bytes, str]:
    data = make_zip(tmp_path / "served.zip", HOTDOG_FILES)
    return data, hashlib.sha1(data).hexdigest()


def test_fetch_extracts_then_reuses_cache_without_network(tmp_path, monkeypatch, server, hotdog_zip):
    data, sha1 = hotdog_zip
    server.routes["/hotdog.zip"] = data
    cache = tmp_path / "cache"
    monkeypatch.setenv("TRANSFERKIT_DATA", str(cache))

    root = fetch_and_extract(f"{server.base}/hotdog.zip", sha1, "hotdog")

    assert root == cache / "hotdog"
    for name, content in HOTDOG_FILES.items():
        assert (cache / name).read_bytes() == content
    assert sorted(p.name for p in cache.iterdir()) == ["hotdog", "hotdog.zip"]  # no .part, no temp folder
    assert server.requests == ["/hotdog.zip"]

    assert fetch_and_extract(f"{server.base}/hotdog.zip", sha1, "hotdog") == root
    shutil.rmtree(root)  # the verified zip is kept, so re-extracting needs no network either
    assert fetch_and_extract(f"{server.base}/hotdog.zip", sha1, "hotdog") == root
    assert (root / "test" / "hotdog" / "c.png").read_bytes() == b"test hotdog"
    assert server.requests == ["/hotdog.zip"]


def test_wrong_hash_keeps_nothing(tmp_path, server, hotdog_zip):
    data, sha1 = hotdog_zip
    server.routes["/hotdog.zip"] = data
    cache = tmp_path / "cache"

    with pytest.raises(DownloadError) as info:
        fetch_and_extract(f"{server.base}/hotdog.zip", "0" * 40, "hotdog", cache_dir=cache)

    message = str(info.value)
    assert "0" * 40 in message and sha1 in message and "nothing was kept" in message
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_unsafe_member_is_refused_before_writing_anything(tmp_path, kind):
    if kind == "parent":
        bad: str | zipfile.ZipInfo = "../evil"
    elif kind == "absolute":
        bad = str(tmp_path / "evil")
    else:
        bad = zipfile.ZipInfo("hotdog/evil")
        bad.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = tmp_path / "bad.zip"
    make_zip(archive, {"hotdog/train/hotdog/a.png": b"ok", bad: str(tmp_path / "evil").encode()})
    dest = tmp_path / "out"
    dest.mkdir()

    with pytest.raises(DownloadError, match="evil"):
        safe_extract_zip(archive, dest)

    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_unsafe_archive_leaves_no_extracted_or_temp_folder(tmp_path, server):
    data = make_zip(tmp_path / "served.zip", {"hotdog/a.png": b"ok", "../evil": b"x"})
    server.routes["/hotdog.zip"] = data
    cache = tmp_path / "cache"

    with pytest.raises(DownloadError, match=r"\.\./evil"):
        fetch_and_extract(f"{server.base}/hotdog.zip", hashlib.sha1(data).hexdigest(), "hotdog", cache_dir=cache)

    assert [p.name for p in cache.iterdir()] == ["hotdog.zip"]  # verified, so kept; nothing extracted
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("failure", ["refused", "timeout"])
def test_unreachable_server_names_url_and_offline_hint(tmp_path, monkeypatch, failure):
    monkeypatch.setattr(download, "TIMEOUT_S", 0.2)
    hint = "or run offline with --set data.root=/path/to/hotdog"
    cache = tmp_path / "cache"

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/hotdog.zip"
        if failure == "timeout":  # connects into the backlog, but no answer ever comes
            sock.listen()
        else:  # nothing listens: connection refused
            sock.close()
        with pytest.raises(DownloadError) as info:
            fetch_and_extract(url, "0" * 40, "hotdog", offline_hint=hint, cache_dir=cache)

    message = str(info.value)
    assert url in message and hint in message and "\n" not in message
    assert list(cache.iterdir()) == []


def test_http_error_names_url_and_status(tmp_path, server):
    url = f"{server.base}/missing.zip"
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download_file(url, tmp_path / "missing.zip", progress=False)
    assert url in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_connection_dropped_mid_body_leaves_nothing_trusted(tmp_path, server, hotdog_zip):
    data, sha1 = hotdog_zip
    server.cut_routes["/hotdog.zip"] = data
    cache = tmp_path / "cache"

    with pytest.raises(DownloadError, match="connection closed"):
        fetch_and_extract(f"{server.base}/hotdog.zip", sha1, "hotdog", cache_dir=cache)
    assert list(cache.iterdir()) == []
    with pytest.raises(DownloadError, match="connection closed"):  # caught by length even without a hash
        download_file(f"{server.base}/hotdog.zip", cache / "hotdog.zip", progress=False)
    assert list(cache.iterdir()) == []

    server.routes["/hotdog.zip"] = data  # a later run downloads afresh instead of trusting a fragment
    root = fetch_and_extract(f"{server.base}/hotdog.zip", sha1, "hotdog", cache_dir=cache)
    assert (root / "train" / "not-hotdog" / "b.png").read_bytes() == b"train not hotdog"
