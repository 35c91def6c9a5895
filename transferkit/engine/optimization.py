"""One optimizer step: autocast, loss and its reduction, backward, gradient scaling, accumulation, clipping,
the scheduler and non-finite checks; "is this an update boundary?" is decided here and nowhere else."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from transferkit.device import autocast
from transferkit.errors import DeviceError, TrainingError


class Optimization:
    """Runs forward + backward for each batch and an optimizer update every `accumulate_steps` batches.

    With loss_reduction "mean" each batch's mean loss is divided by `accumulate_steps`, so K batches of B
    accumulate the gradient of one batch of K x B; "sum" adds per-example losses as they are. The last
    batches of an epoch form a shorter window that still ends in an update.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler=None, *, device: torch.device,
                 precision: str = "fp32", loss_reduction: str = "mean", criterion: nn.Module | None = None,
                 accumulate_steps: int = 1, clip_grad_norm: float | None = None):
        self.optimizer, self.scheduler = optimizer, scheduler
        self.device, self.precision = device, precision
        self.loss_reduction, self.accumulate_steps, self.clip_grad_norm = loss_reduction, accumulate_steps, clip_grad_norm
        # the task's training loss, (logits, targets) -> per-example losses; default: plain cross-entropy
        self.criterion = (criterion if criterion is not None else nn.CrossEntropyLoss(reduction="none")).to(device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.updates = 0  # optimizer updates since training began

    @staticmethod
    def updates_per_epoch(batches: int, accumulate_steps: int) -> int:
        """Optimizer updates in an epoch of `batches` batches: what schedules are sized in."""
        return max(1, math.ceil(batches / accumulate_steps))

    def is_update_boundary(self, step: int, steps_in_epoch: int) -> bool:
        """True when batch `step` (1-based within the epoch) closes an accumulation window."""
        return step % self.accumulate_steps == 0 or step == steps_in_epoch

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example losses of the task's criterion (class indices, soft targets after MixUp/CutMix, label
        vectors or values)."""
        return self.criterion(logits.float(), targets)

    def step(self, forward: nn.Module, images: torch.Tensor, targets: torch.Tensor, update: bool,
             weight: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward for one batch, then (when `update`) clip, step, and advance the schedule.

        `weight` multiplies the loss (see Trainer._loss_weight: processes' shares of a global batch). Under
        DistributedDataParallel the gradients are averaged over processes at update boundaries only.
        Returns the logits and per-example losses, detached.
        """
        no_sync = getattr(forward, "no_sync", None)
        try:
            with no_sync() if no_sync is not None and not update else nullcontext():
                with autocast(self.device, self.precision):
                    logits = forward(images)
                losses = self.losses(logits, targets)
                loss = losses.sum() if self.loss_reduction == "sum" else losses.mean()
                if weight is not None:
                    loss = loss * weight
                self.scaler.scale(loss / self.accumulate_steps if self.loss_reduction == "mean" else loss).backward()
            if update:
                self._update()
        except torch.OutOfMemoryError:
            n = targets.shape[0]
            raise DeviceError(f"out of memory on {self.device} at batch size {n}; lower data.batch_size "
                              f"(e.g. --set data.batch_size={max(1, n // 2)})") from None
        return logits.detach(), losses.detach()

    def _update(self) -> None:
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self.updates += 1

    @staticmethod
    def check_finite(batch_losses: list[torch.Tensor], epoch: int, last_step: int) -> None:
        """TrainingError naming epoch and step at the first non-finite batch loss among the pending ones."""
        values = torch.stack(batch_losses).tolist()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                step = last_step - len(values) + offset + 1
                raise TrainingError(f"loss became {value} at epoch {epoch}, step {step}; the last good checkpoint "
                                    f"is kept; lower optimizer.lr or use precision fp32")

    def state_dict(self) -> dict:
        """Optimizer, scheduler and scaler states, and the update count."""
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.updates = state.get("updates", 0)
