"""The study's report, written from the storage (so from every process's trials): a table of the trials
(trials.csv, and printed), the best trial's recipe (best-recipe.yaml, which `transferkit run` repeats) and
Optuna's plots (history.png, importances.png)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from transferkit.files import atomic_write_bytes, atomic_write_text
from transferkit.run.display import print_table
from transferkit.tune.space import describe
from transferkit.tune.trial import Trials

BEST_HEADER = ("# the best trial of transferkit tune study '{study}': trial {number}, {metric} {value:.4f}\n"
               "# ({counts}); `transferkit run` on this file repeats that trial\n")


@dataclass
class Report:
    """What the report holds: one row per trial, the best trial (if any completed), the files and any notes."""

    rows: list[dict]
    best: dict | None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> str:
        """'20 trials: 12 complete, 7 pruned, 1 failed'."""
        states = [row["state"] for row in self.rows]
        parts = [f"{states.count(s)} {word}" for s, word in (("COMPLETE", "complete"), ("PRUNED", "pruned"),
                                                              ("FAIL", "failed"), ("RUNNING", "running"),
                                                              ("WAITING", "waiting")) if states.count(s)]
        return f"{len(states)} trial{'s' if len(states) != 1 else ''}: {', '.join(parts) or 'none'}"


def trial_rows(study, trials: Trials) -> list[dict]:
    """One row per trial from the storage: number, state, value, parameters, seconds, epochs, folder and why it
    ended; a trial folder whose trial.json disagrees with the storage (a heartbeat failed it) is brought in line."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        folder = trials.folder.trial(trial.number)
        saved = folder.state()
        state = trial.state.name
        if saved and saved.get("state") != state and state != "RUNNING":
            saved = folder.record(state=state, reason=saved.get("reason") or "marked so in the study's storage")
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
            if trial.datetime_complete and trial.datetime_start else None
        rows.append({"number": trial.number, "state": state, "value": trial.value, "params": dict(trial.params),
                     "seconds": seconds, "epochs": saved.get("epochs") or trial.last_step,
                     "folder": str(folder.path) if folder.path.is_dir() else "", "note": saved.get("reason") or ""})
    return rows


def write_table(rows: list[dict], path: Path, metric: str) -> None:
    """trials.csv: number, state, the metric, each parameter, seconds, epochs, folder, note."""
    keys = list(dict.fromkeys(key for row in rows for key in row["params"]))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", metric, *keys, "seconds", "epochs", "folder", "note"])
    for row in rows:
        writer.writerow([row["number"], row["state"], "" if row["value"] is None else row["value"],
                         *(row["params"].get(key, "") for key in keys),
                         "" if row["seconds"] is None else round(row["seconds"], 1), row["epochs"] or "",
                         row["folder"], row["note"]])
    atomic_write_text(path, out.getvalue())


def best_row(study, rows: list[dict]) -> dict | None:
    """The best complete trial's row, or None when none completed."""
    from optuna.trial import TrialState

    complete = [row for row in rows if row["state"] == TrialState.COMPLETE.name]
    if not complete:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(complete, key=lambda row: row["value"])


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def write_plots(study, trials: Trials) -> tuple[list[Path], list[str]]:
    """history.png and importances.png from optuna.visualization.matplotlib; (files written, notes on any not
    drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    folder, written, notes = trials.folder, [], []
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    for path, plot in ((folder.history_png, plot_optimization_history),
                       (folder.importances_png, plot_param_importances)):
        if not finished:
            notes.append(f"{path.name}: not drawn (no trial finished yet)")
            continue
        try:
            axes = plot(study, target_name=trials.metric)
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:  # e.g. importances need 2 complete trials
            notes.append(f"{path.name}: not drawn ({' '.join(str(exc).split())})")
            continue
        atomic_write_bytes(path, _png(axes.figure))
        written.append(path)
    return written, notes


def write_report(study, trials: Trials) -> Report:
    """trials.csv, best-recipe.yaml (when a trial completed) and the plots, in the study folder."""
    rows = trial_rows(study, trials)
    report = Report(rows, best_row(study, rows))
    folder = trials.folder
    write_table(rows, folder.table, trials.metric)
    report.files.append(folder.table)
    if report.best is not None:
        best = report.best
        header = BEST_HEADER.format(study=trials.study, number=best["number"], metric=trials.metric,
                                    value=best["value"], counts=report.counts())
        atomic_write_text(folder.best_recipe, header + trials.recipe_yaml(best["params"]))
        report.files.append(folder.best_recipe)
    else:
        report.notes.append("best-recipe.yaml: no trial completed yet")
    written, notes = write_plots(study, trials)
    report.files += written
    report.notes += notes
    return report


def print_report(report: Report, trials: Trials, console: Console) -> None:
    """The trials as a table (best first, then by number), the best trial's settings and where the files are."""
    order = sorted(report.rows, key=lambda row: (row is not report.best, row["number"]))
    headers = ["trial", "state", trials.metric, "epochs", "seconds", "parameters"]
    body = [[str(row["number"]), row["state"].lower(), "" if row["value"] is None else f"{row['value']:.4f}",
             str(row["epochs"] or ""), "" if row["seconds"] is None else f"{row['seconds']:.0f}",
             describe(row["params"])] for row in order]
    print_table(console, headers, body, title=f"{trials.study}: {report.counts()}", right={0, 2, 3, 4})
    if report.best is not None:
        console.print(f"best: trial {report.best['number']}, {trials.metric} {report.best['value']:.4f}: "
                      f"{describe(report.best['params'])}", markup=False, highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    console.print(f"results in {trials.folder.path} ({', '.join(p.name for p in report.files)})", markup=False,
                  highlight=False, soft_wrap=True)
