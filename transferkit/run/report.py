"""Per-epoch lines, the variants' comparison table, and curves.png."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rich.console import Console

from transferkit.files import atomic_write_bytes, atomic_write_text
from transferkit.rundir import RunRoot

if TYPE_CHECKING:
    from transferkit.run.results import ExperimentResult


def epoch_line(name: str, row: dict, epochs: int) -> str:
    """One line per epoch: train loss and accuracy, test accuracy, images/s (print it on a soft-wrapping
    console, as the CLI's are, so a log keeps it whole)."""
    val = f", val acc {row['val_accuracy']:.3f}" if "val_accuracy" in row else ""
    return (f"{name} epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, "
            f"train acc {row['train_accuracy']:.3f}, test acc {row['test_accuracy']:.3f}{val}, "
            f"{row['train_images_per_s']:.1f} img/s")


def comparison_rows(result: "ExperimentResult") -> list[dict]:
    """One dict per variant: test accuracy per epoch, final and best test accuracy, final loss, time."""
    rows = []
    for name, variant in result.variants.items():
        final = variant.final
        rows.append({"variant": name,
                     "test_accuracy_per_epoch": [round(r["test_accuracy"], 4) for r in variant.history],
                     "final_test_accuracy": final.get("test_accuracy"),
                     "best_test_accuracy": variant.best_test_accuracy,
                     "final_train_loss": final.get("train_loss"),
                     "final_test_loss": final.get("test_loss"),
                     "seconds": round(variant.seconds, 1),
                     "skipped_images": len(variant.skipped_images)})
    return rows


def comparison_table(result: "ExperimentResult", width: int | None = None) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the comparison; with `width`, per-epoch columns are dropped (earliest first) until
    the table fits, never a number or a name cut."""
    from transferkit.run.display import table_width

    rows = comparison_rows(result)
    epochs = max((len(row["test_accuracy_per_epoch"]) for row in rows), default=0)
    finals = ["best test acc", "final train loss", "final test loss", "time"]

    def cells(first_epoch: int) -> tuple[list[str], list[list[str]]]:
        headers = ["variant", *(f"test acc e{e}" for e in range(first_epoch, epochs + 1)), *finals]
        body = []
        for row in rows:
            per_epoch = [f"{a:.3f}" for a in row["test_accuracy_per_epoch"]]
            per_epoch += [""] * (epochs - len(per_epoch))
            body.append([row["variant"], *per_epoch[first_epoch - 1:], f"{row['best_test_accuracy']:.3f}",
                         f"{row['final_train_loss']:.4f}", f"{row['final_test_loss']:.4f}", f"{row['seconds']:.0f}s"])
        return headers, body

    first = 1
    headers, body = cells(first)
    while width is not None and first <= epochs and table_width(headers, body) > width:
        first += 1
        headers, body = cells(first)
    return headers, body


def print_comparison(result: "ExperimentResult", console: Console) -> None:
    """The variants side by side: a table sized to the terminal, plain whole lines in a log or CI."""
    from transferkit.run.display import print_table

    headers, body = comparison_table(result, console.width if console.is_terminal else None)
    print_table(console, headers, body, title=f"{result.name}: variants compared", right=set(range(1, len(headers))))
    console.print(f"results in {result.run_root} (comparison.json, curves.png)", markup=False, highlight=False,
                  soft_wrap=True)


def write_comparison(result: "ExperimentResult") -> None:
    """comparison.json and curves.png in the experiment's run root."""
    result.run_root.mkdir(parents=True, exist_ok=True)
    root = RunRoot(result.run_root)
    atomic_write_text(root.comparison, json.dumps(comparison_rows(result), indent=2))
    atomic_write_bytes(root.curves, curves_png(result))


def curves_png(result: "ExperimentResult") -> bytes:
    """PNG of train loss, train accuracy and test accuracy per epoch, every variant on the same axes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("train_loss", "train loss"), ("train_accuracy", "train accuracy"), ("test_accuracy", "test accuracy"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, title) in zip(axes, panels):
        for name, variant in result.variants.items():
            epochs = [r["epoch"] for r in variant.history]
            ax.plot(epochs, [r[key] for r in variant.history], marker="o", label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if key.endswith("accuracy"):
            ax.set_ylim(0, 1)
    axes[0].legend()
    fig.suptitle(result.name)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
