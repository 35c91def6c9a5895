"""Per-epoch lines, the variants' comparison table, and curves.png."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rich.console import Console

from transferkit.files import atomic_write_bytes, atomic_write_text
from transferkit.rundir import RunRoot

if TYPE_CHECKING:
    from transferkit.run.results import ExperimentResult


SHORT = {"accuracy": "acc", "subset_accuracy": "subset acc"}


def train_metric(row: dict) -> str:
    """The task's training statistic in an epoch row (accuracy, subset_accuracy, mae)."""
    return next(k[len("train_"):] for k in row if k.startswith("train_") and k not in ("train_loss",
                                                                                     "train_images_per_s"))


def epoch_line(name: str, row: dict, epochs: int, metric: str = "accuracy") -> str:
    """One line per epoch: train loss and the task's train statistic, the headline `metric` on test (and val),
    images/s (print it on a soft-wrapping console, as the CLI's are, so a log keeps it whole)."""
    short, stat = SHORT.get(metric, metric), train_metric(row)
    val = f", val {short} {row[f'val_{metric}']:.3f}" if f"val_{metric}" in row else ""
    return (f"{name} epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, "
            f"train {SHORT.get(stat, stat)} {row[f'train_{stat}']:.3f}, test {short} {row[f'test_{metric}']:.3f}"
            f"{val}, {row['train_images_per_s']:.1f} img/s")


def comparison_rows(result: "ExperimentResult") -> list[dict]:
    """One dict per variant: the headline test metric (accuracy, map, mae...) per epoch, final and best, final
    losses, time."""
    rows = []
    for name, variant in result.variants.items():
        final, m = variant.final, variant.metric
        rows.append({"variant": name, "metric": m,
                     f"test_{m}_per_epoch": [round(r[f"test_{m}"], 4) for r in variant.history],
                     f"final_test_{m}": final.get(f"test_{m}"),
                     f"best_test_{m}": variant.best_test,
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
    m = rows[0]["metric"] if rows else "accuracy"
    short = SHORT.get(m, m)
    epochs = max((len(row[f"test_{m}_per_epoch"]) for row in rows), default=0)
    finals = [f"best test {short}", "final train loss", "final test loss", "time"]

    def cells(first_epoch: int) -> tuple[list[str], list[list[str]]]:
        headers = ["variant", *(f"test {short} e{e}" for e in range(first_epoch, epochs + 1)), *finals]
        body = []
        for row in rows:
            per_epoch = [f"{a:.3f}" for a in row[f"test_{m}_per_epoch"]]
            per_epoch += [""] * (epochs - len(per_epoch))
            body.append([row["variant"], *per_epoch[first_epoch - 1:], f"{row[f'best_test_{m}']:.3f}",
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

    first = next(iter(result.variants.values()))
    stat = train_metric(first.history[0]) if first.history else "accuracy"
    panels = (("train_loss", "train loss"), (f"train_{stat}", f"train {stat.replace('_', ' ')}"),
              (f"test_{first.metric}", f"test {first.metric.replace('_', ' ')}"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, title) in zip(axes, panels):
        for name, variant in result.variants.items():
            epochs = [r["epoch"] for r in variant.history]
            ax.plot(epochs, [r[key] for r in variant.history], marker="o", label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if key.endswith(("accuracy", "map", "f1")):
            ax.set_ylim(0, 1)
    axes[0].legend()
    fig.suptitle(result.name)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
