"""`transferkit benchmark`'s outputs: the table (printed, and as benchmark.md), benchmark.json and benchmark.png."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from transferkit.files import atomic_write_bytes, atomic_write_text
from transferkit.run.benchmark import BenchmarkResult, FormatRow
from transferkit.run.display import print_table

HEADERS = ["format", "size MB", "batch-1 p50 ms", "batch-1 p99 ms", "images/s", "vs onnx", "top-1 acc",
           "agrees with fp32", "max prob diff"]
RIGHT = set(range(1, len(HEADERS)))


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_rows(result: BenchmarkResult) -> list[list[str]]:
    """One row of cells per measured format (the others are listed apart, with their reason)."""
    onnx = next((r.images_per_s for r in result.rows if r.format == "onnx" and r.images_per_s), None)
    rows = []
    for r in (r for r in result.rows if r.status == "ok"):
        ratio = f"{r.images_per_s / onnx:.2f}x" if onnx and r.images_per_s else "-"
        megabytes = r.size_bytes / 1e6 if r.size_bytes else None
        rows.append([r.format, _number(megabytes, ".1f"), _number(r.latency_p50_ms, ".1f"), _number(r.latency_p99_ms, ".1f"),
                     _number(r.images_per_s, ".1f"), ratio, _number(r.accuracy, ".3f"), _number(r.agreement, ".3f"),
                     _number(r.max_probability_difference, ".1e")])
    return rows


def _title(result: BenchmarkResult) -> str:
    return (f"{result.model} on {result.images} images of {result.data}; images/s at batch {result.settings.batch}, "
            f"{result.threads} threads")


def unmeasured(result: BenchmarkResult) -> list[FormatRow]:
    """The formats with no figures: a runtime not installed, an export refused."""
    return [r for r in result.rows if r.status != "ok"]


def markdown(result: BenchmarkResult) -> str:
    """The table as Markdown, the formats left out listed below it with their reason."""
    lines = [f"{_title(result)}", "", "| " + " | ".join(HEADERS) + " |",
             "| " + " | ".join(["---"] + ["---:"] * (len(HEADERS) - 1)) + " |"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(result)]
    lines += [""] + [f"- {r.format}: {r.status}: {r.note}" for r in unmeasured(result)]
    return "\n".join(lines).rstrip() + "\n"


def print_benchmark(result: BenchmarkResult, console: Console) -> None:
    """The table, then one line per format left out (with the line that installs its runtime)."""
    print_table(console, HEADERS, table_rows(result), title=_title(result), right=RIGHT)
    for row in unmeasured(result):
        console.print(f"{row.format}: {row.status}: {row.note}", markup=False, highlight=False, soft_wrap=True)


def chart_png(result: BenchmarkResult) -> bytes:
    """Three bar panels, a bar per measured format: images/s, batch-1 latency (p50, p99 as a whisker), accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.rows if r.status == "ok"][::-1]
    names = [r.format for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 1.4 + 0.5 * len(rows)), sharey=True)
    speed = [r.images_per_s or 0.0 for r in rows]
    p50 = [r.latency_p50_ms or 0.0 for r in rows]
    p99 = [max(0.0, (r.latency_p99_ms or 0.0) - (r.latency_p50_ms or 0.0)) for r in rows]
    accuracy = [r.accuracy if r.accuracy is not None else (r.agreement or 0.0) for r in rows]
    panels = ((axes[0], speed, None, f"images/s at batch {result.settings.batch} (more is better)", "{:.1f}"),
              (axes[1], p50, p99, "batch-1 latency ms, p50 (whisker: p99)", "{:.1f}"),
              (axes[2], accuracy, None, "top-1 accuracy" if any(r.accuracy is not None for r in rows)
               else "agreement with fp32", "{:.3f}"))
    for ax, values, whiskers, title, fmt in panels:
        bars = ax.barh(names, values, color="tab:blue",
                       xerr=[[0] * len(values), whiskers] if whiskers else None, capsize=3)
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=3, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, max([v + (w or 0) for v, w in zip(values, whiskers or [0] * len(values))] + [1e-9]) * 1.25)
        ax.grid(axis="x", alpha=0.3)
    axes[2].set_xlim(0, 1.15)  # room for the label of a perfect score
    fig.suptitle(_title(result), fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_benchmark(result: BenchmarkResult, output: Path) -> list[Path]:
    """benchmark.json, benchmark.md and benchmark.png in `output`, each written atomically; their paths."""
    files = [output / "benchmark.json", output / "benchmark.md", output / "benchmark.png"]
    atomic_write_text(files[0], json.dumps(result.to_dict(), indent=2))
    atomic_write_text(files[1], markdown(result))
    atomic_write_bytes(files[2], chart_png(result))
    return files
