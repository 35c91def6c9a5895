"""Small synthetic image sets with label tables, for trying the tasks offline and for tests: shapes on a
background (multi_label) and the red share of an image (regression). `python -m transferkit.synthetic DIR`
writes both."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def shapes_table(root: Path, per_split=(48, 16, 24), size: int = 40, seed: int = 0, delimited: bool = True) -> Path:
    """root/images/*.png each holding a red square, a blue circle, both or neither, and root/labels.csv listing
    them with a split column: `labels` as 'red_square|blue_circle' (or one 0/1 column per shape)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, count in zip(("train", "val", "test"), per_split):
        for i in range(count):
            square, circle = bool(i % 2), bool(i // 2 % 2)
            image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(90, 160, 3)))
            draw = ImageDraw.Draw(image)
            if square:
                x, y = rng.integers(0, size // 2, 2)
                draw.rectangle([x, y, x + size // 2 - 2, y + size // 2 - 2], fill=(230, 20, 20))
            if circle:
                x, y = rng.integers(0, size // 2, 2)
                draw.ellipse([x, y, x + size // 2 - 2, y + size // 2 - 2], fill=(20, 20, 230))
            name = f"images/{split}_{i}.png"
            image.save(root / name)
            labels = [n for n, on in (("red_square", square), ("blue_circle", circle)) if on]
            rows.append({"path": name, "split": split, "labels": "|".join(labels), "red_square": int(square),
                         "blue_circle": int(circle)})
    columns = ["path", "labels", "split"] if delimited else ["path", "red_square", "blue_circle", "split"]
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return root / "labels.csv"


def colour_fraction_table(root: Path, per_split=(64, 16, 24), size: int = 40, seed: int = 0) -> Path:
    """root/images/*.png whose left `fraction` of the width is red (the rest grey), and root/labels.csv with a
    `fraction` column in percent (0-100) and a split column."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, count in zip(("train", "val", "test"), per_split):
        for i in range(count):
            fraction = float(rng.uniform(0, 1))
            pixels = np.full((size, size, 3), 128, dtype=np.int16)
            pixels[:, : int(round(fraction * size))] = (220, 30, 30)
            pixels = np.clip(pixels + rng.integers(-12, 12, pixels.shape), 0, 255).astype("uint8")
            name = f"images/{split}_{i}.png"
            Image.fromarray(pixels).save(root / name)
            rows.append({"path": name, "fraction": round(100 * int(round(fraction * size)) / size, 3), "split": split})
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "fraction", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "labels.csv"


def main(argv: list[str] | None = None) -> None:
    """`python -m transferkit.synthetic DIR`: DIR/shapes/labels.csv and DIR/fraction/labels.csv with their images."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "synthetic")
    print(shapes_table(root / "shapes"))
    print(colour_fraction_table(root / "fraction"))


if __name__ == "__main__":
    main()
