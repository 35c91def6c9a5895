"""A PNG grid of a dataset's training images, a row per class with its label, as d2l shows the hotdog photos."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from transferkit.data.folder import FolderSplits
from transferkit.data.images import EncodedImage, open_rgb
from transferkit.data.shard_index import ShardSplits
from transferkit.data.stream import StreamedSamples
from transferkit.errors import DataError
from transferkit.files import atomic_write_bytes

LABEL_HEIGHT = 18


def preview_rows(splits: FolderSplits, per_row: int = 8, max_classes: int = 20) -> list[list[tuple[Path, str]]]:
    """One row per class (the first `max_classes` classes): its first `per_row` training images, labelled.

    Streamed shards are read in order only until every row is full."""
    rows: dict[int, list[tuple[Path, str]]] = {label: [] for label in range(min(len(splits.classes), max_classes))}
    samples = splits.train
    if isinstance(splits, ShardSplits):
        samples = StreamedSamples(samples.urls, samples.counts, splits.labels, splits.classes)
    for path, label in samples:
        if label in rows and len(rows[label]) < per_row:
            rows[label].append((path, splits.classes[label]))
            if all(len(row) == per_row for row in rows.values()):
                break
    return [row for row in rows.values() if row]


def preview_grid(rows: list[list[tuple[Path, str]]], per_row: int = 8, cell: int = 128) -> Image.Image:
    """Images fitted into `cell`-pixel squares, one row of up to `per_row` per class, each labelled underneath."""
    grid = Image.new("RGB", (per_row * cell, max(1, len(rows)) * (cell + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        for i, (path, label) in enumerate(row[:per_row]):
            x, y = i * cell, r * (cell + LABEL_HEIGHT)
            try:
                picture = path.decode() if isinstance(path, EncodedImage) else open_rgb(path)
            except DataError:  # check-data names it; the grid shows where it is
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill="lightgrey")
                draw.text((x + 4, y + 4), "unreadable", fill="black")
            else:
                grid.paste(ImageOps.pad(picture, (cell, cell), color="white"), (x, y))
            draw.text((x + 4, y + cell + 3), label, fill="black")
    return grid


def write_preview(splits: FolderSplits, output: Path, per_row: int = 8, cell: int = 128,
                  max_classes: int = 20) -> Image.Image:
    """Write the preview grid of `splits` (a row per class, up to `max_classes`) as a PNG at `output` (atomically)."""
    import io

    grid = preview_grid(preview_rows(splits, per_row, max_classes), per_row, cell)
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    atomic_write_bytes(output, buffer.getvalue())
    return grid
