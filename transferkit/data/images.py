"""Decode any image file into an upright 8-bit RGB picture, or say clearly why not."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from transferkit.errors import DataError


def open_rgb(path: str | Path) -> Image.Image:
    """Open `path` as an upright RGB image; raise DataError naming the file when it cannot be read."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({exc}); remove or replace the file, "
                        f"or set data.on_bad_image: skip") from exc
