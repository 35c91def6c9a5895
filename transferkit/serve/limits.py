"""What a request may carry (body size, images, content types); an upload that breaks a rule is a 4xx, one line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

import torch
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from transferkit.data.images import ImageReadError
from transferkit.errors import DataError
from transferkit.inference.batches import ImagePreparer, read_error

MULTIPART = "multipart/form-data"
RAW_TYPES = ("image/", "application/octet-stream")  # a raw body's content type: any image/*, or plain bytes
# An image that cannot be read, by ImageReadError.kind: an empty file is a bad request, an image too large to
# decode is "content too large", anything else is content the server understood but cannot process.
STATUS_BY_KIND = {"zero-byte": 400, "too-large": 413}
UNPROCESSABLE = 422


@dataclass(frozen=True)
class Limits:
    """The most a request may send: body bytes and images. Pixels per image are capped as everywhere in
    transferkit, by $TRANSFERKIT_MAX_IMAGE_PIXELS (Pillow's 89.5 million when unset)."""

    max_body_bytes: int = 20 * 2**20
    max_images: int = 64


class RequestError(Exception):
    """A request the server refuses: its HTTP status and a one-line reason with the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    """One image as sent: a name for messages (the multipart filename, or `body`) and its bytes."""

    name: str
    data: bytes


async def bounded(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body in chunks; RequestError 413 as soon as it passes `limit` bytes (declared or sent)."""
    declared = request.headers.get("content-length", "")
    too_large = RequestError(413, f"request body over the limit of {limit} bytes; send fewer or smaller images "
                                  f"(the server's --max-body-mb)")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise too_large
        yield chunk


async def read_uploads(request: Request, limits: Limits) -> list[Upload]:
    """The images a request sends: the file fields of a multipart form, in order, or a raw body of one image."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == MULTIPART:
        uploads = await _form_files(request, limits)
    elif content_type.startswith(RAW_TYPES):
        data = b"".join([chunk async for chunk in bounded(request, limits.max_body_bytes)])
        uploads = [Upload("body", data)]
    else:
        raise RequestError(415, f"content type {content_type or '(none)'!r}: send images as multipart/form-data "
                                f"file fields, or one image as the raw body with an image/* content type")
    if not uploads:
        raise RequestError(400, "no image files in the form; add one or more file fields")
    if len(uploads) > limits.max_images:
        raise RequestError(413, f"{len(uploads)} images in one request, over the limit of {limits.max_images}; "
                                f"split them over several requests")
    for upload in uploads:
        if not upload.data:
            raise RequestError(400, f"{upload.name}: empty (0 bytes); send the image's bytes")
    return uploads


async def _form_files(request: Request, limits: Limits) -> list[Upload]:
    parser = MultiPartParser(request.headers, bounded(request, limits.max_body_bytes),
                             max_files=limits.max_images, max_fields=100)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise RequestError(413, f"over the limit of {limits.max_images} images in one request; split them "
                                    f"over several requests") from None
        raise RequestError(400, f"malformed multipart form ({exc.message}); send file fields") from None
    uploads = []
    try:
        for field, value in form.multi_items():
            if not isinstance(value, UploadFile):
                continue  # a text field: nothing to classify
            part_type = (value.content_type or "").split(";")[0].strip().lower()
            name = value.filename or field
            if part_type and not part_type.startswith(RAW_TYPES):
                raise RequestError(415, f"{name}: content type {part_type!r} is not an image; send image files")
            uploads.append(Upload(name, await value.read()))
    finally:
        await form.close()
    return uploads


def decode(preparer: ImagePreparer, upload: Upload) -> torch.Tensor:
    """The model input for one upload, as `predict` would read the same file; RequestError when it cannot be read."""
    try:
        return preparer.from_bytes(upload.name, upload.data)
    except ImageReadError as exc:
        if exc.kind == "not-an-image":
            reason = "not an image Pillow can read; send a JPEG, PNG, WebP, BMP, GIF or TIFF file"
        else:
            reason = read_error(exc)
        raise RequestError(STATUS_BY_KIND.get(exc.kind, UNPROCESSABLE), f"{upload.name}: {reason}") from None
    except DataError as exc:  # e.g. a bad $TRANSFERKIT_MAX_IMAGE_PIXELS: the server's fault, said in one line
        raise RequestError(500, " ".join(str(exc).split())) from None
