"""Helpers for testing datasets, plugins and the server offline: a local HTTP server, zip building, and
`transferkit serve` in a subprocess."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class LocalServer:
    """An HTTP server on 127.0.0.1 (a free port) in a thread, serving `routes` and recording requests.

    `routes[path] = body` serves `body`; `cut_routes[path] = body` announces `body`'s length but
    closes after half of it (an interrupted download). Use as a context manager, or call close().
    """

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.cut_routes: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                full, cut = server.routes.get(self.path), server.cut_routes.get(self.path)
                if full is None and cut is None:
                    self.send_error(404)
                    return
                announced = full if full is not None else cut
                self.send_response(200)
                self.send_header("Content-Length", str(len(announced)))
                self.end_headers()
                self.wfile.write(full if full is not None else cut[: len(cut) // 2])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        """The full URL of `path` on this server."""
        return self.base + path

    def close(self) -> None:
        """Stop serving and free the port."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_zip(path: Path, members: dict[str | zipfile.ZipInfo, bytes]) -> bytes:
    """Write `members` (name or ZipInfo -> content) as a zip at `path`; returns the archive's bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return Path(path).read_bytes()


def sha1_of(data: bytes) -> str:
    """Hex SHA-1 of `data`."""
    return hashlib.sha1(data).hexdigest()


class ServeProcess:
    """`transferkit serve MODEL --host 127.0.0.1 --port 0 ARGS` in a subprocess, ready once /health answers.

    `url` is its base URL (no trailing slash), `lines` its standard error so far. Use as a context manager: the
    process is killed on the way out if it still runs, whatever happened.
    """

    def __init__(self, model: str | Path, *args: str, env: dict | None = None, startup_s: float = 120):
        full_env = {**os.environ, "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})}
        self.process = subprocess.Popen([sys.executable, "-m", "transferkit.cli", "serve", str(model),
                                         "--host", "127.0.0.1", "--port", "0", *args], env=full_env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.process.stderr.readline, "")),
                                       daemon=True)
        self.reader.start()
        try:
            self.url = self._wait_ready(time.monotonic() + startup_s)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, deadline: float) -> str:
        url = None
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"transferkit serve did not start: {''.join(self.lines)}")
            url = url or next((word.rstrip("/") for line in list(self.lines) for word in line.split()
                               if word.startswith("http://")), None)
            if url is not None:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                        if answer.status == 200:
                            return url
                except (urllib.error.URLError, ConnectionError):
                    pass
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def close(self) -> None:
        """Kill the server if it still runs and wait for it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self.reader.join(timeout=5)

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
