"""The HTTP API over a predictor: POST /predict, GET /health, /metadata, /stats, and the page at /."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import asdict

import anyio
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from transferkit.data.images import pixel_limit
from transferkit.data.loading import available_cores
from transferkit.inference.batches import ImagePreparer
from transferkit.inference.predictor import Prediction, Predictor
from transferkit.serve.batching import Batcher, BatchStats, batch_sizes
from transferkit.serve.limits import Limits, RequestError, decode, read_uploads
from transferkit.serve.page import page_html


def model_format(predictor: Predictor) -> str:
    """The kind of file being served, from its backend: torch (a checkpoint), onnx, torchscript, ..."""
    return type(predictor).__name__.removesuffix("Predictor").lower()


def metadata(predictor: Predictor, limits: Limits, max_batch: int, max_wait_ms: float) -> dict:
    """What a client needs to know about the model and the server."""
    import transferkit

    task_state = json.loads(json.dumps(predictor.task.state_dict(), default=float))  # numpy scalars as floats
    return {"model": str(predictor.source), "format": model_format(predictor), "task": predictor.task.name,
            "task_state": task_state, predictor.task.output_kind: list(predictor.classes),
            "classes": list(predictor.classes), "preprocessing": asdict(predictor.preprocessing),
            "device": str(predictor.device), "version": transferkit.__version__,
            "limits": {"max_body_bytes": limits.max_body_bytes, "max_images": limits.max_images,
                       "max_image_pixels": pixel_limit()},
            "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "batch_sizes": batch_sizes(max_batch)}}


def batch_runner(predictor: Predictor):
    """A Batcher's `run`: (image tensor, top-k) items -> one forward pass -> a Prediction each, as `predict` answers."""
    def run(items: list[tuple[torch.Tensor, int]]) -> list[Prediction]:
        k = max(top_k for _, top_k in items)
        logits = predictor.logits(torch.stack([image for image, _ in items]))
        rows = predictor.answer_rows(logits, [""] * len(items), k)
        for row, (_, top_k) in zip(rows, items):
            row.top_k = row.top_k[:top_k]
        return rows
    return run


def one_line(status: int, message: str) -> JSONResponse:
    """The error body every refusal has: {"error": "one line"}."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def create_app(predictor: Predictor, limits: Limits = Limits(), max_batch: int = 32,
               max_wait_ms: float = 5.0) -> FastAPI:
    """The FastAPI application serving `predictor`; at startup it runs each batch size once (Batcher.warm_up),
    its batching worker runs for the app's lifespan and drains every accepted image before shutdown ends."""
    stats = BatchStats()
    preparer = ImagePreparer(predictor.preprocessing)
    decoders = anyio.CapacityLimiter(max(1, available_cores()))
    info = metadata(predictor, limits, max_batch, max_wait_ms)
    page = page_html()
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = Batcher(batch_runner(predictor), max_batch, max_wait_ms / 1000, stats)
        size = predictor.preprocessing.input_size
        blank = torch.zeros(3, size, size, dtype=torch.uint8)
        await batcher.warm_up(lambda count: [(blank, 1)] * count)
        batcher.start()
        state["batcher"] = batcher
        try:
            yield
        finally:
            await batcher.close()

    app = FastAPI(title="transferkit serve", version=info["version"], lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # FastAPI's docs pages load from a CDN
    app.state.stats = stats

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        stats.refused[exc.status] += 1
        return one_line(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return one_line(exc.status_code, exc.detail)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        stats.refused[500] += 1
        return one_line(500, f"{type(exc).__name__}: {exc}")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        stats.refused[422] += 1
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return one_line(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        """Ready to predict."""
        return {"status": "ok"}

    @app.get("/metadata")
    async def get_metadata() -> dict:
        """Classes, task, preprocessing, format, version, limits and batching settings."""
        return info

    @app.get("/stats")
    async def get_stats() -> dict:
        """Requests, refusals, images, forward passes and the batch-size histogram since start."""
        return stats.as_dict()

    @app.post("/predict")
    async def predict(request: Request, top_k: int = Query(5, ge=1, le=1000)) -> dict:
        """Classify the images of a multipart form (file fields) or of a raw image body."""
        stats.in_flight += 1
        try:
            uploads = await read_uploads(request, limits)
            images = []
            for upload in uploads:
                images.append(await anyio.to_thread.run_sync(decode, preparer, upload, limiter=decoders))
            k = min(top_k, len(predictor.classes))
            rows = await state["batcher"].submit([(image, k) for image in images])
            stats.requests += 1
            return {"predictions": [{"file": upload.name, **row.record()} for upload, row in zip(uploads, rows)]}
        finally:
            stats.in_flight -= 1

    return app
