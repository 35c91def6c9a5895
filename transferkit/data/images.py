"""Decode any image file into an upright 8-bit RGB picture, or say clearly why not."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
    "too-large": "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file",
    "unreadable-mode": "save it again as 8-bit RGB or grayscale (PNG or JPEG)",
    "unreadable": "check that the file exists and can be read",
}


class ImageReadError(DataError):
    """An image that cannot be decoded; `kind` names the problem and `reason` explains it."""

    def __init__(self, path: Path, kind: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}; {FIXES[kind]}, or set data.on_bad_image: skip")
        self.path, self.kind, self.reason = path, kind, reason


def open_rgb(path: str | Path, data: bytes | None = None) -> Image.Image:
    """Open `path` (or decode its already-read `data`) as upright 8-bit RGB; raise ImageReadError if unreadable."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as img:
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
