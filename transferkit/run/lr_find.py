"""LR finder: sweep the learning rate exponentially over a few hundred updates on a copy of the model,
plot the smoothed loss, and suggest the LR where it falls fastest (fastai's `lr_find`, "steep")."""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferkit.engine.optimization import Optimization
from transferkit.engine.trainer import Trainer
from transferkit.errors import TrainingError
from transferkit.files import atomic_write_bytes


@dataclass
class LRFindResult:
    """The LRs tried, their raw and smoothed losses, and the suggested base LR."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float


def sweep_lr(trainer: Trainer, loader, base_lr: float, start_lr: float = 1e-7, end_lr: float = 10.0,
             steps: int = 200, beta: float = 0.98, diverge: float = 4.0) -> LRFindResult:
    """Train on a deep copy of `trainer`'s model and optimizer (the originals are left untouched), one update
    per batch at LRs from start_lr to end_lr; stops early once the smoothed loss exceeds `diverge` x its best.

    Each parameter group keeps its ratio to `base_lr` (a head at 10x stays at 10x); the result is a base LR.
    """
    model = copy.deepcopy(trainer.model)
    forward = model.head if trainer.forward is trainer.model.head else model
    mapping = dict(zip((id(p) for p in trainer.model.parameters()), model.parameters()))
    groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": [mapping[id(p)] for p in group["params"]]}
              for group in trainer.optimizer.param_groups]
    optimizer = type(trainer.optimizer)(groups, **trainer.optimizer.defaults)
    ratios = [group["lr"] / base_lr for group in optimizer.param_groups]
    opt = Optimization(optimizer, None, device=trainer.device, precision=trainer.precision,
                       loss_reduction=trainer.optimization.loss_reduction,
                       criterion=trainer.optimization.criterion)
    model.train()
    lrs, losses, smoothed = [], [], []
    average, best, pass_no, diverged = 0.0, math.inf, 0, False
    with trainer.progress.task("lr-find", total=steps) as task:
        while len(lrs) < steps and not diverged:
            pass_no += 1
            loader.sampler.set_epoch(pass_no)
            for batch in loader:
                if len(lrs) >= steps:
                    break
                if batch.labels.shape[0] == 0:
                    continue
                lr = start_lr * (end_lr / start_lr) ** (len(lrs) / max(1, steps - 1))
                for group, ratio in zip(optimizer.param_groups, ratios):
                    group["lr"] = lr * ratio
                images, labels = trainer.to_device(batch)
                _, batch_losses = opt.step(forward, images, labels, update=True)
                loss = batch_losses.mean().item()
                if not math.isfinite(loss):
                    diverged = True
                    break
                average = beta * average + (1 - beta) * loss
                value = average / (1 - beta ** (len(lrs) + 1))
                lrs.append(lr)
                losses.append(loss)
                smoothed.append(value)
                best = min(best, value)
                task.advance(1, loss=value)
                if len(lrs) > 10 and value > diverge * best:
                    diverged = True
                    break
    if len(lrs) < 5:
        raise TrainingError(f"lr-find: only {len(lrs)} updates ran before the loss diverged; lower --start-lr")
    return LRFindResult(lrs, losses, smoothed, steepest(lrs, smoothed))


def steepest(lrs: list[float], smoothed: list[float]) -> float:
    """The LR where the smoothed loss falls fastest against log(LR), between the first tenth of the sweep
    (where the running average has not settled) and the loss's minimum."""
    start = max(1, len(lrs) // 10)
    end = start + int(np.argmin(smoothed[start:])) + 1
    if end - start < 3:
        return lrs[end - 1]
    slope = np.gradient(np.asarray(smoothed[start:end]), np.log(np.asarray(lrs[start:end])))
    return float(lrs[start + int(np.argmin(slope))])


def plot_png(result: LRFindResult, title: str) -> bytes:
    """PNG of the smoothed loss against the LR (log axis), the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(result.lrs, result.losses, color="0.8", linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", label="smoothed loss")
    at = result.lrs.index(result.suggestion)
    ax.axvline(result.suggestion, color="tab:red", linestyle="--", linewidth=1)
    ax.plot([result.suggestion], [result.smoothed[at]], "o", color="tab:red",
            label=f"suggested lr {result.suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (base; other groups keep their ratio)")
    ax.set_ylabel("training loss")
    top = min(max(result.smoothed), 3 * result.smoothed[0]) if result.smoothed[0] > 0 else max(result.smoothed)
    ax.set_ylim(min(result.smoothed) * 0.9, top * 1.05)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_plot(result: LRFindResult, path: Path, title: str) -> None:
    """The plot, written atomically."""
    atomic_write_bytes(path, plot_png(result, title))
