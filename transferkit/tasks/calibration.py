"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") and the measures of calibration
that evaluate reports: negative log-likelihood, expected calibration error and the reliability bins behind it."""

from __future__ import annotations

import numpy as np

BINS = 15  # equal-width confidence bins, as in Guo et al.
LIMITS = (0.05, 20.0)  # the temperatures searched: far wider than any a trained network needs


def log_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise log-softmax of logits / temperature, in float64."""
    scaled = logits.astype(np.float64) / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under softmax(logits / temperature)."""
    if len(targets) == 0:
        return float("nan")
    return float(-log_probabilities(logits, temperature)[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) on these examples (1.0 when there are
    none). The NLL is convex in 1 / T, so a bounded scalar search over log T finds the one minimum."""
    if len(targets) == 0:
        return 1.0
    from scipy.optimize import minimize_scalar

    low, high = np.log(LIMITS[0]), np.log(LIMITS[1])
    found = minimize_scalar(lambda log_t: nll(logits, targets, float(np.exp(log_t))), bounds=(low, high),
                            method="bounded", options={"xatol": 1e-5})
    return float(np.exp(found.x))


def reliability_bins(probabilities: np.ndarray, targets: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per equal-width bin of the top probability: its range, count, mean confidence and accuracy (None when
    empty)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "confidence": float(confidence[inside].mean()) if count else None,
                     "accuracy": float(correct[inside].mean()) if count else None})
    return rows


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray, bins: int = BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the bins."""
    if len(targets) == 0:
        return float("nan")
    rows = reliability_bins(probabilities, targets, bins)
    return float(sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]) / len(targets))


def calibration_report(logits: np.ndarray, targets: np.ndarray, temperature: float) -> dict:
    """NLL, ECE and reliability bins of the raw probabilities (`before`) and of those at `temperature` (`after`)."""
    report = {"temperature": temperature, "images": int(len(targets)), "bins": BINS}
    for name, t in (("before", 1.0), ("after", temperature)):
        probabilities = np.exp(log_probabilities(logits, t))
        report[name] = {"nll": nll(logits, targets, t), "ece": expected_calibration_error(probabilities, targets),
                        "reliability": reliability_bins(probabilities, targets)}
    return report
