"""What `evaluate` reports for the tasks that are not one class per image: multi_label (per-label table, PR
curves) and regression (per-target errors, predicted against true, residuals); single_label's report is
evaluate.py's own. A plugin task without a report of its own gets its epoch metrics."""

from __future__ import annotations

import numpy as np
import torch

from transferkit.inference.plots import _png, _pyplot
from transferkit.tables import print_table


class TaskReport:
    """Metrics, per-file rows, files and a printed summary of one evaluation, for one task."""

    def __init__(self, task):
        self.task = task

    def metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict:
        """The task's metrics over the whole set."""
        values = self.task.epoch_metrics(torch.from_numpy(logits), torch.from_numpy(targets))
        return {"images": int(len(targets)), **values}

    def rows(self, paths: list[str], logits: np.ndarray, targets: np.ndarray) -> list[dict]:
        """predictions.csv: one row per file."""
        answers = self.task.answers(logits)
        return [{"path": path, **{f"answer_{i}": float(v) for i, v in enumerate(row)}}
                for path, row in zip(paths, answers)]

    def files(self, metrics: dict, rows: list[dict], title: str) -> dict[str, bytes]:
        """PNG pictures of the evaluation, by file name."""
        return {}

    def print(self, metrics: dict, console, title: str) -> None:
        """The summary a user reads in the terminal."""
        console.print(f"{title}: {self.line(metrics)}", highlight=False)

    def line(self, metrics: dict) -> str:
        """One line of the headline numbers."""
        names = [m for m in self.task.metrics if m in metrics]
        return f"{metrics['images']} images: " + ", ".join(f"{m} {metrics[m]:.4f}" for m in names)


class MultiLabelReport(TaskReport):
    """Per label: AP, precision, recall and F1 at its threshold, support; mAP, macro F1, subset accuracy; PR curves."""

    def metrics(self, logits, targets):
        from transferkit.tasks.multi_label import average_precisions

        metrics = super().metrics(logits, targets)
        probabilities, truth = self.task.answers(logits), targets > 0.5
        predicted = probabilities >= np.asarray(self.task.thresholds)[None, :]
        precisions = average_precisions(probabilities, truth)
        per_label = []
        for i, name in enumerate(self.task.outputs):
            tp = int((predicted[:, i] & truth[:, i]).sum())
            n_predicted, support = int(predicted[:, i].sum()), int(truth[:, i].sum())
            precision = tp / n_predicted if n_predicted else 0.0
            recall = tp / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            per_label.append({"label": name, "ap": precisions[i], "threshold": float(self.task.thresholds[i]),
                              "precision": precision, "recall": recall, "f1": f1, "support": support})
        metrics.update(per_label=per_label, thresholds_tuned=self.task.tuned,
                       pr_curves=_pr_curves(probabilities, truth, self.task.outputs))
        return metrics

    def rows(self, paths, logits, targets):
        probabilities = self.task.answers(logits)
        out = []
        for path, p, t in zip(paths, probabilities, targets):
            answer = self.task.answer(p, len(p))
            true = [name for name, v in zip(self.task.outputs, t) if v > 0.5]
            out.append({"path": path, "true_labels": self.task.delimiter.join(true), "predicted_labels": answer["label"],
                        **{f"p_{name}": float(v) for name, v in zip(self.task.outputs, p)}})
        return out

    def files(self, metrics, rows, title):
        plt = _pyplot()
        curves = metrics["pr_curves"]
        fig, ax = plt.subplots(figsize=(6.5, 5))
        for row in metrics["per_label"]:
            curve = curves.get(row["label"])
            if curve:
                ax.plot(curve["recall"], curve["precision"], label=f"{row['label']} (AP {row['ap']:.3f})")
                ax.scatter([row["recall"]], [row["precision"]], s=18)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"{title}: precision-recall per label (dots: at the threshold)")
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        return {"pr_curves.png": _png(fig)}

    def print(self, metrics, console, title):
        rows = [[row["label"], "-" if row["ap"] is None else f"{row['ap']:.3f}", f"{row['threshold']:.3f}",
                 f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"])]
                for row in metrics["per_label"]]
        print_table(console, ["label", "AP", "threshold", "precision", "recall", "f1", "support"], rows, title,
                    right=set(range(1, 7)))
        tuned = "tuned on the validation split" if metrics.get("thresholds_tuned") else "as set"
        console.print(f"{self.line(metrics)} (thresholds {tuned})", highlight=False)

    def line(self, metrics):
        return (f"{metrics['images']} images: mAP {metrics['map']:.3f}, F1 {metrics['f1']:.3f}, subset accuracy "
                f"{metrics['subset_accuracy']:.3f}, loss {metrics['loss']:.4f}")


def _pr_curves(probabilities: np.ndarray, truth: np.ndarray, labels: list[str]) -> dict[str, dict]:
    from sklearn.metrics import precision_recall_curve

    curves = {}
    for i, name in enumerate(labels):
        if truth[:, i].any():
            precision, recall, _ = precision_recall_curve(truth[:, i], probabilities[:, i])
            curves[name] = {"precision": precision.round(5).tolist(), "recall": recall.round(5).tolist()}
    return curves


class RegressionReport(TaskReport):
    """Per target: MAE, RMSE and R² in the target's units; predicted against true, and residuals, as PNG."""

    def metrics(self, logits, targets):
        from sklearn.metrics import r2_score

        metrics = super().metrics(logits, targets)
        predicted = self.task.answers(logits)
        per_target = []
        for i, name in enumerate(self.task.outputs):
            errors = predicted[:, i] - targets[:, i]
            per_target.append({"target": name, "mae": float(np.abs(errors).mean()),
                               "rmse": float(np.sqrt((errors ** 2).mean())),
                               "r2": float(r2_score(targets[:, i], predicted[:, i])) if len(errors) > 1 else None,
                               "mean": float(targets[:, i].mean())})
        metrics["per_target"] = per_target
        return metrics

    def rows(self, paths, logits, targets):
        predicted = self.task.answers(logits)
        return [{"path": path, **{f"true_{n}": float(t[i]) for i, n in enumerate(self.task.outputs)},
                 **{f"predicted_{n}": float(p[i]) for i, n in enumerate(self.task.outputs)}}
                for path, p, t in zip(paths, predicted, targets)]

    def files(self, metrics, rows, title):
        plt = _pyplot()
        names = self.task.outputs
        fig, axes = plt.subplots(len(names), 2, figsize=(10, 4 * len(names)), squeeze=False)
        for i, name in enumerate(names):
            true = np.array([r[f"true_{name}"] for r in rows])
            predicted = np.array([r[f"predicted_{name}"] for r in rows])
            low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
            left, right = axes[i]
            left.scatter(true, predicted, s=12, alpha=0.7)
            left.plot([low, high], [low, high], color="grey", linewidth=1)
            left.set_xlabel(f"true {name}")
            left.set_ylabel(f"predicted {name}")
            stats = metrics["per_target"][i]
            r2 = "-" if stats["r2"] is None else f"{stats['r2']:.3f}"
            left.set_title(f"{name}: MAE {stats['mae']:.4g}, R² {r2}")
            right.scatter(predicted, predicted - true, s=12, alpha=0.7)
            right.axhline(0, color="grey", linewidth=1)
            right.set_xlabel(f"predicted {name}")
            right.set_ylabel("residual (predicted - true)")
            right.set_title("residuals")
            for ax in (left, right):
                ax.grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        return {"predicted_vs_true.png": _png(fig)}

    def print(self, metrics, console, title):
        rows = [[row["target"], f"{row['mae']:.4g}", f"{row['rmse']:.4g}", "-" if row["r2"] is None else
                 f"{row['r2']:.3f}", f"{row['mean']:.4g}"] for row in metrics["per_target"]]
        print_table(console, ["target", "MAE", "RMSE", "R²", "mean"], rows, title, right=set(range(1, 5)))
        console.print(self.line(metrics), highlight=False)

    def line(self, metrics):
        return (f"{metrics['images']} images: MAE {metrics['mae']:.4g}, RMSE {metrics['rmse']:.4g}, "
                f"R² {metrics['r2']:.3f}")


REPORTS = {"multi_label": MultiLabelReport, "regression": RegressionReport}


def report_for(task) -> TaskReport:
    """The report of `task` (its own, or the generic one of epoch metrics)."""
    return REPORTS.get(task.name, TaskReport)(task)
