"""compare-backbones' outputs: the ranked table (Rich on a terminal, whole lines elsewhere), compare.json and
compare.png."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from transferkit.files import atomic_write_bytes, atomic_write_text
from transferkit.run.compare_backbones import Row

COLUMNS = ("rank", "backbone", "weights", "val acc", "test acc", "extract img/s", "params", "time")
SKIPPED_SHOWN = 20


def _cells(rank: int, row: Row) -> list[str]:
    return [str(rank), row.backbone, row.weights or "default", f"{row.val_accuracy:.3f}",
            f"{row.test_accuracy:.3f}", f"{row.images_per_s:.1f}" if row.images_per_s else "-",
            f"{row.params / 1e6:.1f}M", f"{row.seconds:.0f}s"]


def table_lines(rows: list[Row]) -> list[str]:
    """The ranked table as plain, aligned whole lines (for logs and pipes)."""
    body = [_cells(i, r) for i, r in enumerate((r for r in rows if not r.skipped), 1)]
    widths = [max(len(c) for c in column) for column in zip(COLUMNS, *body)]
    return ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
            .rstrip() for cells in (COLUMNS, *body)]


def print_ranking(rows: list[Row], console: Console, seconds: float) -> None:
    """The ranked table, the skipped candidates with their fixes, and the total time."""
    probed = [r for r in rows if not r.skipped]
    if console.is_terminal:
        table = Table(title=f"backbones ranked by validation accuracy ({seconds:.0f}s)")
        for i, column in enumerate(COLUMNS):
            table.add_column(column, justify="left" if i < 3 else "right")
        for i, row in enumerate(probed, 1):
            table.add_row(*_cells(i, row))
        console.print(table)
    else:
        for line in table_lines(rows):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        console.print(f"{len(probed)} backbone(s) ranked by validation accuracy in {seconds:.0f}s", highlight=False)
    skipped = [r for r in rows if r.skipped]
    for row in skipped[:SKIPPED_SHOWN]:
        console.print(f"skipped {row.backbone}: {row.skipped}", markup=False, highlight=False, soft_wrap=True)
    if len(skipped) > SKIPPED_SHOWN:
        console.print(f"... and {len(skipped) - SKIPPED_SHOWN} more skipped (listed in compare.json)", highlight=False)


def write_outputs(rows: list[Row], output: Path, settings: dict, seconds: float) -> None:
    """compare.json (every row, the settings, the winner, the time) and compare.png, written atomically."""
    probed = [r for r in rows if not r.skipped]
    report = {"winner": probed[0].backbone, "fit_option": probed[0].fit_option, "seconds": round(seconds, 1),
              "settings": settings, "ranked": [r.to_dict() for r in probed],
              "skipped": [{"backbone": r.backbone, "weights": r.weights, "fix": r.skipped} for r in rows if r.skipped]}
    atomic_write_text(output / "compare.json", json.dumps(report, indent=2))
    atomic_write_bytes(output / "compare.png", chart_png(probed))


def chart_png(rows: list[Row]) -> bytes:
    """PNG of two bar panels, best first from the top: validation accuracy and feature-extraction images/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.backbone for r in rows][::-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.45 * len(rows)), sharey=True)
    panels = ((axes[0], [r.val_accuracy for r in rows][::-1], "validation accuracy", "{:.3f}"),
              (axes[1], [r.images_per_s or 0.0 for r in rows][::-1], "feature extraction img/s", "{:.1f}"))
    for ax, values, title, fmt in panels:
        bars = ax.barh(names, values, color="tab:blue")
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=3, fontsize=8)
        ax.set_title(title)
        ax.set_xlim(0, max(values + [1e-9]) * 1.2)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_xlim(0, 1.15)  # room for the labels of a perfect score
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
