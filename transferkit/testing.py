"""Helpers for testing datasets and plugins offline: a local HTTP server and zip building."""

from __future__ import annotations

import hashlib
import threading
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
