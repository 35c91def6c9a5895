"""Classification metrics from true labels and logits: loss, top-k accuracy, per-class scores, confusion matrix."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def confusion_matrix(targets: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted] as int64."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (targets, predicted), 1)
    return counts


def per_class_scores(counts: np.ndarray, classes: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of each class; a score whose denominator is 0 is 0."""
    rows = []
    for i, name in enumerate(classes):
        tp = int(counts[i, i])
        predicted, support = int(counts[:, i].sum()), int(counts[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": support})
    return rows


def averages(rows: list[dict]) -> dict[str, dict]:
    """Macro (every class present alike) and weighted (by support) precision, recall and F1; a class with no
    true sample (absent from the evaluated set) is left out of the macro average, as its recall means nothing."""
    support = np.array([r["support"] for r in rows], dtype=np.float64)
    present = (support > 0).astype(np.float64) if support.any() else np.ones_like(support)
    result = {}
    for name, weights in (("macro", present), ("weighted", support)):
        total = weights.sum()
        result[name] = {key: float(np.dot(weights, [r[key] for r in rows]) / total) if total else 0.0
                        for key in ("precision", "recall", "f1")}
        result[name]["support"] = int(support.sum())
    return result


def top_k_accuracy(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the k highest logits."""
    if len(targets) == 0:
        return float("nan")
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == targets[:, None]).any(axis=1).mean())


def classification_metrics(logits: np.ndarray, targets: np.ndarray, classes: list[str]) -> dict:
    """Everything evaluate reports: loss, top-1 (and top-5 with 5+ classes), per-class rows, averages, matrix."""
    predicted = logits.argmax(axis=1)
    counts = confusion_matrix(targets, predicted, len(classes))
    losses = -log_softmax(logits)[np.arange(len(targets)), targets]
    rows = per_class_scores(counts, classes)
    metrics = {"images": int(len(targets)), "loss": float(losses.mean()) if len(targets) else float("nan"),
               "top1_accuracy": top_k_accuracy(logits, targets, 1)}
    if len(classes) >= 5:
        metrics["top5_accuracy"] = top_k_accuracy(logits, targets, 5)
    metrics.update(per_class=rows, **{f"{name}_avg": avg for name, avg in averages(rows).items()},
                   confusion_matrix=counts.tolist())
    return metrics
