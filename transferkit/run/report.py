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
    """One line per epoch: train loss and the task's train statistic, the headline `metric` on test (when it is
    evaluated every epoch) and val, images/s (print it on a soft-wrapping console, as the CLI's are, so a log
    keeps it whole)."""
    short, stat = SHORT.get(metric, metric), train_metric(row)
    shown = "".join(f", {split} {short} {row[f'{split}_{metric}']:.3f}" for split in ("test", "val")
                    if f"{split}_{metric}" in row)
    return (f"{name} epoch {row['epoch']}/{epochs}: train loss {number(row['train_loss'])}, "
            f"train {SHORT.get(stat, stat)} {row[f'train_{stat}']:.3f}{shown}, {row['train_images_per_s']:.1f} img/s")


def comparison_rows(result: "ExperimentResult") -> list[dict]:
    """One dict per variant: the headline metric (accuracy, map, mae...) per epoch on test (when evaluated every
    epoch) and val, the selected weights' (best.pt's) test value and loss, the last epoch's, time."""
    rows = []
    for name, variant in result.variants.items():
        final, m = variant.final, variant.metric
        rows.append({"variant": name, "metric": m,
                     **{f"{split}_{m}_per_epoch": [round(r[f"{split}_{m}"], 4) for r in variant.history
                                                   if f"{split}_{m}" in r] for split in ("test", "val")},
                     f"final_test_{m}": final.get(f"test_{m}"),
                     f"best_test_{m}": variant.best_test,
                     "best_test_loss": variant.test.get("test_loss"),
                     "final_train_loss": final.get("train_loss"),
                     "final_test_loss": final.get("test_loss"),
                     "best_epoch": variant.best_epoch,
                     "seconds": round(variant.seconds, 1),
                     "skipped_images": len(variant.skipped_images)})
    return rows


LOG_EPOCHS = 3  # off a terminal: the first and last few epochs, so a long run's log line stays readable


def number(value: float, digits: int = 4) -> str:
    """A metric or loss as a readable number: fixed point, or scientific once it is huge (a diverged loss)."""
    return f"{value:.{digits}f}" if abs(value) < 1e8 else f"{value:.3e}"


def shown_epochs(epochs: int, first_epoch: int, width: int | None) -> list[int | None]:
    """The epoch columns: all from `first_epoch` on a terminal; in a log the first and last LOG_EPOCHS with
    None (an ellipsis column) between them when there are more."""
    if width is None and epochs > 2 * LOG_EPOCHS + 1:
        return [*range(1, LOG_EPOCHS + 1), None, *range(epochs - LOG_EPOCHS + 1, epochs + 1)]
    return list(range(first_epoch, epochs + 1))


def comparison_table(result: "ExperimentResult", width: int | None = None) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the comparison; with `width`, per-epoch columns are dropped (earliest first) until
    the table fits, never a number or a name cut; without (a log), the first and last few epochs."""
    from transferkit.tables import table_width

    rows = comparison_rows(result)
    m = rows[0]["metric"] if rows else "accuracy"
    short = SHORT.get(m, m)
    split = "test" if any(row[f"test_{m}_per_epoch"] for row in rows) else "val"  # test: when evaluated each epoch
    epochs = max((len(row[f"{split}_{m}_per_epoch"]) for row in rows), default=0)
    finals = [f"best.pt test {short}", "best.pt epoch", "final train loss", "best.pt test loss", "time"]

    def cells(first_epoch: int) -> tuple[list[str], list[list[str]]]:
        shown = shown_epochs(epochs, first_epoch, width)
        headers = ["variant", *(f"{split} {short} e{e}" if e else "..." for e in shown), *finals]
        body = []
        for row in rows:
            per_epoch = row[f"{split}_{m}_per_epoch"]
            values = [("..." if e is None else f"{per_epoch[e - 1]:.3f}" if e <= len(per_epoch) else "")
                      for e in shown]
            loss = row["best_test_loss"]
            body.append([row["variant"], *values, f"{row[f'best_test_{m}']:.3f}", str(row["best_epoch"] or "-"),
                         number(row["final_train_loss"]), "-" if loss is None else number(loss),
                         f"{row['seconds']:.0f}s"])
        return headers, body

    first = 1
    headers, body = cells(first)
    while width is not None and first <= epochs and table_width(headers, body) > width:
        first += 1
        headers, body = cells(first)
    return headers, body


def print_comparison(result: "ExperimentResult", console: Console) -> None:
    """The variants side by side: a table sized to the terminal, plain whole lines in a log or CI."""
    from transferkit.tables import print_table

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
    """PNG of the losses (train, val, test; EMA dashed), the task's train statistic and its headline metric on
    val and test (EMA dashed) per epoch, every variant in its colour, a ring at the epoch best.pt holds."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    first = next(iter(result.variants.values()))
    stat = train_metric(first.history[0]) if first.history else "accuracy"
    m = first.metric
    panels = (("loss", ["train_loss", "val_loss", "test_loss", "ema_val_loss", "ema_test_loss"]),
              (f"train {stat.replace('_', ' ')}", [f"train_{stat}"]),
              (m.replace("_", " "), [f"val_{m}", f"test_{m}", f"ema_val_{m}", f"ema_test_{m}"]))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, keys) in zip(axes, panels):
        for index, (name, variant) in enumerate(result.variants.items()):
            colour = colours[index % len(colours)]
            epochs = [r["epoch"] for r in variant.history]
            for key in keys:
                if not variant.history or key not in variant.history[0]:
                    continue
                split = key.removeprefix("ema_").split("_")[0]
                style = {"train": ":", "val": "-", "test": "-"}[split] if not key.startswith("ema_") else "--"
                values = [r[key] for r in variant.history]
                ax.plot(epochs, values, linestyle=style, marker="o" if split == "test" else None, markersize=3,
                        color=colour, alpha=1.0 if split == "test" else 0.7, label=f"{name} {key}")
                if variant.best_epoch and key in (f"val_{m}", f"test_{m}") and variant.best_epoch <= len(values):
                    ax.scatter([variant.best_epoch], [values[variant.best_epoch - 1]], s=110, facecolors="none",
                               edgecolors=colour, linewidths=1.5, zorder=5)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if title.endswith(("accuracy", "map", "f1")):
            ax.set_ylim(0, 1.02)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{result.name} (rings: the epoch best.pt holds)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
