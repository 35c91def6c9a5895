"""Decode any image file into an upright 8-bit RGB picture, or say clearly why not."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from transferkit.errors import DataError

WHITE = (255, 255, 255)
# Modes Pillow converts to RGB faithfully; alpha, 16-bit and the rest are handled below or refused.
DIRECT_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
# Mode I (32-bit integers) is read like a 16-bit PNG: values 0..65535.
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})

FIXES = {
    "zero-byte": "delete it or copy it again from its source",
    "not-an-image": "delete it or give it the extension of its real format",
    "truncated": "download or export it again, or delete it",
    "too-large": "downscale it, or raise TRANSFERKIT_MAX_IMAGE_PIXELS if you trust the file",
    "unreadable-mode": "save it again as 8-bit RGB or grayscale (PNG or JPEG)",
    "unreadable": "check that the file exists and can be read",
}


SKIP_HINT = ", or set data.on_bad_image: skip"  # the way on when a run stops at the image (not once it skips it)


@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes with the name that identifies it (a streamed sample: shard, key and source file)."""

    name: str
    data: bytes
    suffix: str = ".jpg"

    def __str__(self) -> str:
        return self.name

    def decode(self, min_side: int | None = None) -> Image.Image:
        """Upright 8-bit RGB, as open_rgb decodes a file; ImageReadError naming this image when it is unreadable."""
        try:
            return open_rgb(Path(f"image{self.suffix}"), self.data, min_side)
        except ImageReadError as exc:
            raise ImageReadError(self.name, exc.kind, exc.reason) from exc


class ImageReadError(DataError):
    """An image that cannot be decoded; `kind` names the problem and `reason` explains it."""

    def __init__(self, path: Path, kind: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}; {FIXES[kind]}{SKIP_HINT}")
        self.path, self.kind, self.reason = path, kind, reason


LIMIT_VARIABLE = "TRANSFERKIT_MAX_IMAGE_PIXELS"


def pixel_limit() -> int:
    """The most pixels one image may decode to: $TRANSFERKIT_MAX_IMAGE_PIXELS, else Pillow's MAX_IMAGE_PIXELS
    (89.5 million), the guard against decompression bombs."""
    value = os.environ.get(LIMIT_VARIABLE, "").strip().replace("_", "")
    if not value:
        return Image.MAX_IMAGE_PIXELS or 2**62
    if not value.isdigit() or int(value) < 1:
        raise DataError(f"{LIMIT_VARIABLE}={value!r}: not a positive whole number of pixels, e.g. 200000000")
    return int(value)


def _open(source, min_side: int | None) -> Image.Image:
    """The image, not yet loaded; a JPEG is set to decode at the smallest 1/2, 1/4 or 1/8 scale whose sides
    stay at least `min_side` (the model needs a few hundred pixels, a phone photo has 12,000)."""
    if hasattr(source, "read"):
        head = source.read(3)
        source.seek(0)
    else:
        with open(source, "rb") as file:
            head = file.read(3)
    if head != b"\xff\xd8\xff":
        return Image.open(source)  # Pillow's own guard stops a bomb over twice its limit here
    img = JpegImagePlugin.JpegImageFile(source)  # its size is checked below, after the draft
    if min_side:
        img.draft("RGB", (min_side, min_side))
    return img


def open_rgb(path: str | Path, data: bytes | None = None, min_side: int | None = None) -> Image.Image:
    """Open `path` (or decode its already-read `data`) as upright 8-bit RGB; raise ImageReadError if unreadable.

    With `min_side`, a large JPEG may come back smaller, its shorter side still at least `min_side` pixels.
    An image decoding to more than pixel_limit() pixels is refused as a possible decompression bomb.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked just below
            with _open(path if data is None else io.BytesIO(data), min_side) as img:
                width, height = img.size
                if width * height > pixel_limit():
                    raise Image.DecompressionBombError(
                        f"{width}x{height} = {width * height} pixels to decode, over the limit of {pixel_limit()}")
                img.load()
                ImageOps.exif_transpose(img, in_place=True)
                return to_rgb(img, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(path, "too-large", f"too large to decode safely ({str(exc).rstrip('.')})") from exc
    except UnidentifiedImageError as exc:
        empty = len(data) == 0 if data is not None else path.stat().st_size == 0
        if empty:
            raise ImageReadError(path, "zero-byte", "file is empty (0 bytes)") from exc
        raise ImageReadError(path, "not-an-image", f"not an image despite its '{path.suffix}' extension") from exc
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise ImageReadError(path, "unreadable", f"cannot read file ({exc.strerror})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(path, "truncated", f"truncated or corrupt image data ({str(exc).rstrip('.')})") from exc


def to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """Convert a loaded image to 8-bit RGB: alpha over white, 16-bit scaled down; raise on other modes."""
    if img.mode in ALPHA_MODES or (img.mode in ("L", "P", "RGB") and "transparency" in img.info):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        out = Image.new("RGB", rgba.size, WHITE)
        out.paste(rgba, mask=rgba)
        return out
    if img.mode in DIRECT_MODES:
        return img.convert("RGB")
    if img.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img).clip(0, 65535).astype(np.uint32)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    raise ImageReadError(path, "unreadable-mode", f"image mode {img.mode} cannot be converted to 8-bit RGB")
