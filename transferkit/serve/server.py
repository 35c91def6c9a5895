"""Run the app under uvicorn on a socket bound here (so --port 0 can say which port it got); SIGTERM or Ctrl-C
finish the requests in flight, drain the batcher, and return."""

from __future__ import annotations

import signal
import socket
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Callable

from transferkit.errors import TransferkitError
from transferkit.serve.backends import BACKENDS, check_backend

GRACE_S = 30  # the longest a stop waits for requests in flight


@dataclass
class ServeSettings:
    """Everything `transferkit serve` takes besides the model."""

    host: str = "127.0.0.1"
    port: int = 8000
    backend: str | None = None
    device: str = "auto"
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_body_bytes: int = 20 * 2**20
    max_images: int = 64


class _Stopped(Exception):
    """uvicorn re-raises the stopping signal after its graceful shutdown; this turns it into a normal return."""


def _stopped(signum, frame):
    raise _Stopped(signum)


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0: a free one), or a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (without it a keep-alive request
    # waits ~40 ms for the client's delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise TransferkitError(f"--host {host} --port {port}: cannot listen there ({exc.strerror}); "
                               f"pick another port, or --port 0 for a free one") from None
    return sock


def require_serve_extra() -> None:
    """A one-line error naming the install when FastAPI, uvicorn or python-multipart is missing."""
    missing = [name for name, module in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"),
                                         ("python-multipart", "python_multipart")) if find_spec(module) is None]
    if missing:
        raise TransferkitError(f"transferkit serve needs {', '.join(missing)}; install the serve extra: "
                               f"pip install 'transferkit[serve]'")


def serve(model: str, settings: ServeSettings, notify: Callable[[str], None] = print):
    """Load `model` (run directory, checkpoint, or exported file) and serve it until SIGTERM or Ctrl-C; returns
    the server's counters (BatchStats) after every accepted request was answered."""
    require_serve_extra()
    backend = check_backend(model, settings.backend)
    sock = bind(settings.host, settings.port)  # before the model loads: a busy port fails at once
    try:
        return _serve_on(sock, model, backend, settings, notify)
    finally:
        sock.close()


def _serve_on(sock: socket.socket, model: str, backend: str, settings: ServeSettings, notify):
    import gc

    import uvicorn

    from transferkit.inference.model import load_predictor
    from transferkit.serve.app import create_app, model_format
    from transferkit.serve.limits import Limits

    predictor = load_predictor(model, settings.device, settings.max_batch)
    app = create_app(predictor, Limits(settings.max_body_bytes, settings.max_images), settings.max_batch,
                     settings.max_wait_ms)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=GRACE_S))
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    notify(f"serving {predictor.source} ({model_format(predictor)} with {BACKENDS[backend].runtime} on "
           f"{predictor.device}, {len(predictor.classes)} {predictor.task.output_kind}) at {url} ; "
           f"SIGTERM or Ctrl-C stops it")
    # the libraries' and the model's objects live as long as the process: frozen, the collector no longer walks
    # them, during serving or at exit (exiting after SIGTERM took 7 s on a busy 2-core machine, now about 1 s)
    gc.freeze()
    try:
        server.run(sockets=[sock])
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return app.state.stats
