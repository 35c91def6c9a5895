"""PNG pictures of an evaluation: the confusion matrix (counts and row-normalised), the top-losses grid (with its
Grad-CAM row), and a grid of Grad-CAM overlays."""

from __future__ import annotations

import io

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()


def confusion_png(counts: np.ndarray, classes: list[str], title: str) -> bytes:
    """Two panels: counts, and each true class's row divided by its support; cells annotated up to 30 classes."""
    plt = _pyplot()
    support = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, support, out=np.zeros(counts.shape, dtype=np.float64), where=support > 0)
    n = len(classes)
    side = min(24.0, max(4.5, 0.45 * n + 2.5))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side + 0.6))
    for ax, values, name, fmt in ((axes[0], counts, "counts", "d"), (axes[1], normalised, "row-normalised (recall)", ".2f")):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(1e-9, values.max()) if fmt == "d" else 1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(name)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(n), classes, rotation=90 if n > 4 else 0)
        ax.set_yticks(range(n), classes)
        if n <= 30:
            threshold = values.max() / 2
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=8,
                            color="white" if values[i, j] > threshold else "black")
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def top_losses_png(images: list[np.ndarray], captions: list[str], title: str, columns: int = 4,
                   heatmaps: list[np.ndarray | None] | None = None) -> bytes:
    """A grid of (H, W, 3) uint8 images, each with its caption; with `heatmaps` (Grad-CAM overlays, one per image),
    each row of images is followed by a row of their heatmaps; a note instead when there are none."""
    return _png(top_losses_figure(images, captions, title, columns, heatmaps))


def top_losses_figure(images: list[np.ndarray], captions: list[str], title: str, columns: int = 4,
                      heatmaps: list[np.ndarray | None] | None = None):
    """The matplotlib figure of top_losses_png."""
    plt = _pyplot()
    if not images:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center", fontsize=12)
        fig.suptitle(title)
        return fig
    return _grid(images, captions, title, columns, heatmaps)


def _grid(images: list[np.ndarray], captions: list[str], title: str, columns: int,
          heatmaps: list[np.ndarray | None] | None = None):
    """A figure of captioned images, rows tall enough for the captions' lines (each line short enough for its
    image's width: inference.evaluate.shortened), so no caption runs into another or into an image."""
    plt = _pyplot()
    columns = min(columns, len(images))
    rows = (len(images) + columns - 1) // columns
    per_row = 2 if heatmaps else 1
    lines = max(caption.count("\n") + 1 for caption in captions)
    fig, axes = plt.subplots(rows * per_row, columns, figsize=(2.6 * columns, (2.5 + 0.2 * lines) * rows * per_row
                                                               + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index, (image, caption) in enumerate(zip(images, captions)):
        row, column = divmod(index, columns)
        axes[row * per_row, column].imshow(image)
        axes[row * per_row, column].set_title(caption, fontsize=8)
        if heatmaps and heatmaps[index] is not None:
            axes[row * per_row + 1, column].imshow(heatmaps[index])
            axes[row * per_row + 1, column].set_title("Grad-CAM: where it saw\nthe predicted class", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()), h_pad=1.0)  # the title clear of the captions
    return fig


def explanations_png(overlays: list[np.ndarray], captions: list[str], title: str, columns: int = 4) -> bytes:
    """A grid of Grad-CAM overlays ((H, W, 3) uint8), each with its caption."""
    return _png(_grid(overlays, captions, title, columns))


def reliability_png(calibration: dict, title: str) -> bytes:
    """Reliability diagram: accuracy against confidence per bin (the diagonal is perfect calibration), before and
    after the temperature side by side (one panel when none was fitted), bin counts underneath."""
    plt = _pyplot()
    fitted = calibration["temperature"] != 1.0
    sides = [("before", "raw probabilities"), ("after", f"temperature {calibration['temperature']:.3f}")]
    sides = sides if fitted else sides[:1]
    fig, axes = plt.subplots(2, len(sides), figsize=(4.6 * len(sides), 5.6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]})
    for column, (key, label) in enumerate(sides):
        side = calibration[key]
        bins = side["reliability"]
        centres = [(b["low"] + b["high"]) / 2 for b in bins]
        width = bins[0]["high"] - bins[0]["low"]
        top, bottom = axes[0, column], axes[1, column]
        top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        top.bar(centres, [b["accuracy"] or 0.0 for b in bins], width=width * 0.95, color="tab:blue", alpha=0.8,
                label="accuracy")
        top.bar(centres, [(b["confidence"] or 0.0) - (b["accuracy"] or 0.0) for b in bins], width=width * 0.95,
                bottom=[b["accuracy"] or 0.0 for b in bins], fill=False, hatch="//", edgecolor="tab:red",
                linewidth=0.8, label="gap to mean confidence")  # hatched, not filled: it reads over the blue too
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy")
        top.set_title(f"{label}\nECE {side['ece']:.3f}, NLL {side['nll']:.3f}", fontsize=10)
        top.legend(fontsize=7, loc="upper left")
        bottom.bar(centres, [b["count"] for b in bins], width=width * 0.95, color="grey")
        bottom.set_xlim(0, 1)
        bottom.set_xlabel("confidence (top probability)")
        bottom.set_ylabel("images")
    fig.suptitle(f"{title}: reliability ({calibration['images']} images)")
    fig.tight_layout()
    return _png(fig)
