"""A PNG grid of a dataset's images with their labels, as d2l shows the hotdog photos."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from transferkit.data.folder import FolderSplits
from transferkit.data.images import open_rgb
from transferkit.files import atomic_write_bytes

LABEL_HEIGHT = 18


def preview_samples(splits: FolderSplits, per_row: int = 8) -> list[tuple[Path, str]]:
    """The first `per_row` training images of the first class and the last `per_row` of the last class."""
    first = [p for p, label in splits.train if label == 0][:per_row]
    last_label = len(splits.classes) - 1
    last = [p for p, label in splits.train if label == last_label][-per_row:]
    return [(p, splits.classes[0]) for p in first] + [(p, splits.classes[last_label]) for p in last]


def preview_grid(samples: list[tuple[Path, str]], per_row: int = 8, cell: int = 128) -> Image.Image:
    """Images fitted into `cell`-pixel squares, `per_row` a row, each with its label underneath."""
    rows = max(1, -(-len(samples) // per_row))
    grid = Image.new("RGB", (per_row * cell, rows * (cell + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (path, label) in enumerate(samples):
        x, y = (i % per_row) * cell, (i // per_row) * (cell + LABEL_HEIGHT)
        image = ImageOps.pad(open_rgb(path), (cell, cell), color="white")
        grid.paste(image, (x, y))
        draw.text((x + 4, y + cell + 3), label, fill="black")
    return grid


def write_preview(splits: FolderSplits, output: Path, per_row: int = 8, cell: int = 128) -> Image.Image:
    """Write the preview grid of `splits` as a PNG at `output` (atomically); returns the image."""
    import io

    grid = preview_grid(preview_samples(splits, per_row), per_row, cell)
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    atomic_write_bytes(output, buffer.getvalue())
    return grid
