"""LR finder: sweep the learning rate exponentially over a few hundred updates on a copy of the model,
plot the smoothed loss, and suggest an LR in the middle of its longest fall (fastai's `lr_find`, "valley"),
or say why the curve cannot support one."""

from __future__ import annotations

import copy
import io
import bisect
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
    """The LRs tried, their raw and smoothed losses, the suggested base LR, or (suggestion None) why there is none."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    valley: tuple[int, int] = (0, 0)  # indices into lrs where the longest fall of the smoothed loss starts and ends
    warning: str | None = None

    @property
    def fall(self) -> float:
        """How much the smoothed loss falls over the valley, as a share of where it starts."""
        start, end = self.valley
        top = self.smoothed[start]
        return (top - self.smoothed[end]) / top if top > 0 else 0.0


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
    return suggest(lrs, losses, smoothed)


MIN_FALL = 0.05  # a valley whose loss falls less than this share of its start is a flat curve


def suggest(lrs: list[float], losses: list[float], smoothed: list[float]) -> LRFindResult:
    """The result with its suggestion: halfway along the longest fall of the smoothed loss (fastai's "valley"),
    skipping the first tenth (the running average settling) and the last few updates (the divergence).

    No suggestion, and a warning saying why, when the curve is flat (the loss falls less than MIN_FALL over
    the valley) or noisy (the fall is smaller than the scatter of the loss between updates)."""
    first = max(1, len(lrs) // 10)
    last = max(first + 2, len(lrs) - 5)
    start, end = trim(smoothed, *(first + i for i in longest_fall(smoothed[first:last])))
    result = LRFindResult(lrs, losses, smoothed, None, (start, end))
    drop = smoothed[start] - smoothed[end]
    scatter = update_scatter(losses[first:last])
    if end - start < 3 or result.fall < MIN_FALL:
        result.warning = (f"the loss is flat: it falls {result.fall:.0%} at most (from {lrs[start]:.1e} to "
                          f"{lrs[end]:.1e}); the sweep shows no LR better than another")
    elif drop < scatter:
        result.warning = (f"the loss is noisy: its largest fall ({drop:.3g}, from {lrs[start]:.1e} to "
                          f"{lrs[end]:.1e}) is smaller than its scatter between updates ({scatter:.3g})")
    else:
        result.suggestion = float(lrs[(start + end) // 2])
    return result


def longest_fall(values: list[float]) -> tuple[int, int]:
    """First and last index of the longest strictly decreasing subsequence of `values` (O(n log n))."""
    tails: list[float] = []   # tails[k]: the negated last value of the best subsequence of length k + 1
    ends: list[int] = []      # ends[k]: its index
    previous = [-1] * len(values)
    for i, value in enumerate(values):
        k = bisect.bisect_left(tails, -value)
        previous[i] = ends[k - 1] if k else -1
        if k == len(tails):
            tails.append(-value)
            ends.append(i)
        else:
            tails[k], ends[k] = -value, i
    if not ends:
        return 0, 0
    first = last = ends[-1]
    while previous[first] >= 0:
        first = previous[first]
    return first, last


def trim(smoothed: list[float], start: int, end: int, share: float = 0.1) -> tuple[int, int]:
    """The valley without its flat ends: from the last point above `share` of its fall to the first point
    within `share` of its bottom (on a long flat start the subsequence only skips noise, and would drag the
    suggestion down by decades)."""
    top, bottom = smoothed[start], smoothed[end]
    high, low = top - share * (top - bottom), bottom + share * (top - bottom)
    first = max((i for i in range(start, end + 1) if smoothed[i] >= high), default=start)
    last = next((i for i in range(first, end + 1) if smoothed[i] <= low), end)
    return first, last


def update_scatter(losses: list[float]) -> float:
    """A robust standard deviation of the raw loss from one update to the next (the trend cancels out)."""
    if len(losses) < 3:
        return 0.0
    steps = np.diff(np.asarray(losses))
    return float(1.4826 * np.median(np.abs(steps - np.median(steps))) / math.sqrt(2))


def sweep_recipe(spec, console, progress: bool = True, start_lr: float = 1e-7, end_lr: float = 10.0,
                 steps: int = 200) -> LRFindResult:
    """Build `spec`'s model and data, fit its head first when the recipe has train.probe_epochs (as `run`
    would: the LR to find is the fine-tuning one, after the probe), then sweep."""
    from transferkit.run.assemble import assemble
    from transferkit.run.probe import probe_head

    parts = assemble(spec, console, progress)
    if spec.train.probe_epochs:
        probe_head(parts, console)
    return sweep_lr(parts.trainer, parts.train_loader, spec.optimizer.lr, start_lr, end_lr, steps)


def plot_png(result: LRFindResult, title: str) -> bytes:
    """PNG of the smoothed loss against the LR (log axis), the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(result.lrs, result.losses, color="0.8", linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", label="smoothed loss")
    start, end = result.valley
    ax.axvspan(result.lrs[start], result.lrs[end], color="tab:green", alpha=0.08, label="longest fall")
    if result.suggestion is not None:
        at = result.lrs.index(result.suggestion)
        ax.axvline(result.suggestion, color="tab:red", linestyle="--", linewidth=1)
        ax.plot([result.suggestion], [result.smoothed[at]], "o", color="tab:red",
                label=f"suggested lr {result.suggestion:.2g}")
    else:
        title = f"{title}: no suggestion"
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
