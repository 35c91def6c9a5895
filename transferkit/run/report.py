"""Per-epoch lines, the variants' comparison table, and curves.png."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from transferkit.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from transferkit.run.results import ExperimentResult


def epoch_line(name: str, row: dict, epochs: int) -> str:
    """One line per epoch: train loss and accuracy, test accuracy, images/s."""
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


def print_comparison(result: "ExperimentResult", console: Console) -> None:
    """The variants side by side as a Rich table."""
    table = Table(title=f"{result.name}: variants compared")
    epochs = max((len(v.history) for v in result.variants.values()), default=0)
    table.add_column("variant")
    for e in range(1, epochs + 1):
        table.add_column(f"test acc e{e}", justify="right")
    for column in ("best test acc", "final train loss", "final test loss", "time"):
        table.add_column(column, justify="right")
    for row in comparison_rows(result):
        per_epoch = [f"{a:.3f}" for a in row["test_accuracy_per_epoch"]]
        per_epoch += [""] * (epochs - len(per_epoch))
        table.add_row(row["variant"], *per_epoch, f"{row['best_test_accuracy']:.3f}",
                      f"{row['final_train_loss']:.4f}", f"{row['final_test_loss']:.4f}", f"{row['seconds']:.0f}s")
    console.print(table)
    console.print(f"results in {result.run_root} (comparison.json, curves.png)")


def write_comparison(result: "ExperimentResult") -> None:
    """comparison.json and curves.png in the experiment's run root."""
    result.run_root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(result.run_root / "comparison.json", json.dumps(comparison_rows(result), indent=2))
    atomic_write_bytes(result.run_root / "curves.png", curves_png(result))


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
