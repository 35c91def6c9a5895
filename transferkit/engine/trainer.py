"""The training and evaluation loop: device placement, precision, progress and non-finite checks."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from transferkit.data.device_augment import crop_on_device
from transferkit.data.loading import BadImage, Batch
from transferkit.engine.placement import autocast
from transferkit.errors import DataError, DeviceError, TrainingError
from transferkit.progress import Progress


class Interrupted(Exception):
    """Training stopped on request (SIGINT/SIGTERM) after a whole step; carries the epoch's progress so far."""

    def __init__(self, epoch: int, partial: dict):
        super().__init__(f"interrupted during epoch {epoch}")
        self.epoch, self.partial = epoch, partial


@dataclass
class EpochStats:
    """Mean loss, accuracy, example count and throughput of one pass over a loader."""

    loss: float
    accuracy: float
    examples: int
    seconds: float
    bad: list[BadImage] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        """Examples processed per wall-clock second."""
        return self.examples / self.seconds if self.seconds > 0 else 0.0


class Trainer:
    """Runs epochs of a model on one device with the recipe's precision, loss reduction and memory format."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, device: torch.device,
                 precision: str, loss_reduction: str = "mean", label_smoothing: float = 0.0,
                 channels_last: bool = False, on_bad_image: str = "fail", progress: Progress | None = None,
                 compiled: nn.Module | None = None, crop_size: int | None = None):
        self.model = model
        self.forward = compiled if compiled is not None else model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.precision = precision
        self.loss_reduction = loss_reduction
        self.criterion = nn.CrossEntropyLoss(reduction="none", label_smoothing=label_smoothing)
        self.channels_last = channels_last
        self.on_bad_image = on_bad_image
        self.progress = progress or Progress(enabled=False)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.sync_every = 1 if device.type == "cpu" else 16
        self.crop_size = crop_size  # output side of device augmentation (batches that carry crop boxes)

    def to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels on the device, in the model's memory format.

        A batch with crop boxes (data.augment_on: device) is cropped and flipped here, into float 0-255 images.
        """
        images = batch.images.to(self.device, non_blocking=True)
        if batch.boxes is not None:
            if self.crop_size is None:
                raise ValueError("a batch with crop boxes needs Trainer(crop_size=...)")
            return (crop_on_device(images, batch.boxes.to(self.device, non_blocking=True),
                                   batch.flips.to(self.device, non_blocking=True), self.crop_size, self.channels_last),
                    batch.labels.to(self.device, non_blocking=True))
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, batch.labels.to(self.device, non_blocking=True)

    def _handle_bad(self, batch: Batch, bad: list[BadImage]) -> bool:
        """Record unreadable files; stop under on_bad_image=fail. False when the batch is empty."""
        if batch.bad:
            if self.on_bad_image == "fail":
                raise DataError(batch.bad[0].message)
            bad.extend(batch.bad)
        return batch.labels.numel() > 0

    def train_epoch(self, loader: DataLoader, epoch: int, epochs: int, partial: dict | None = None,
                    should_stop=lambda: False) -> EpochStats:
        """One pass of training, or its rest after `partial` (a resumed interruption).

        Raises TrainingError at the first non-finite loss (naming epoch and step), and Interrupted
        after the current step once `should_stop()` is true.
        """
        self.model.train()
        partial = partial or {"step": 0, "loss_sum": 0.0, "correct": 0, "examples": 0, "seconds": 0.0}
        loss_sum = torch.tensor(partial["loss_sum"], device=self.device, dtype=torch.float64)
        correct = torch.tensor(partial["correct"], device=self.device, dtype=torch.int64)
        pending: list[torch.Tensor] = []
        examples, bad, start = partial["examples"], [], time.perf_counter() - partial["seconds"]
        first_step = partial["step"]
        total_steps = first_step + len(loader)
        step = first_step

        def progress_so_far() -> dict:
            if pending:
                self._check_finite(pending, epoch, step)
            return {"step": step, "loss_sum": loss_sum.item(), "correct": int(correct.item()),
                    "examples": examples, "seconds": time.perf_counter() - start}

        with self.progress.task(f"epoch {epoch}/{epochs} train", total=total_steps) as task:
            task.advance(first_step)
            batches = iter(loader)
            while True:
                if should_stop():
                    raise Interrupted(epoch, progress_so_far())
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except RuntimeError:
                    if should_stop():  # Ctrl-C also reached the loader's workers, which then quit
                        raise Interrupted(epoch, progress_so_far()) from None
                    raise
                step += 1
                if not self._handle_bad(batch, bad):
                    task.advance()
                    continue
                images, labels = self.to_device(batch)
                try:
                    with autocast(self.device, self.precision):
                        logits = self.forward(images)
                        losses = self.criterion(logits.float(), labels)
                    loss = losses.sum() if self.loss_reduction == "sum" else losses.mean()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                except torch.OutOfMemoryError:
                    raise DeviceError(f"out of memory on {self.device} at batch size {labels.numel()}; "
                                      f"lower data.batch_size (e.g. --set data.batch_size={max(1, labels.numel() // 2)})") from None
                if self.scheduler is not None:
                    self.scheduler.step()
                batch_loss = losses.detach().sum()
                loss_sum += batch_loss
                correct += (logits.detach().argmax(1) == labels).sum()
                examples += labels.numel()
                pending.append(batch_loss)
                if len(pending) >= self.sync_every or step == total_steps:
                    self._check_finite(pending, epoch, step)
                    pending = []
                    seconds = time.perf_counter() - start
                    task.advance(1, loss=loss_sum.item() / examples, rate=examples / max(seconds, 1e-9))
                else:
                    task.advance(1)
        if pending:
            self._check_finite(pending, epoch, step)
        seconds = time.perf_counter() - start
        if examples == 0:
            raise DataError("no readable training images; run `transferkit check-data` on the data root")
        return EpochStats(loss_sum.item() / examples, correct.item() / examples, examples, seconds, bad)

    @staticmethod
    def _check_finite(pending: list[torch.Tensor], epoch: int, last_step: int) -> None:
        values = torch.stack(pending).tolist()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                step = last_step - len(values) + offset + 1
                raise TrainingError(f"loss became {value} at epoch {epoch}, step {step}; the last good checkpoint "
                                    f"is kept; lower optimizer.lr or use precision fp32")

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, label: str = "test") -> EpochStats:
        """Mean loss and accuracy over a loader in eval mode."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        examples, bad, start = 0, [], time.perf_counter()
        with self.progress.task(f"{label}", total=len(loader)) as task:
            for batch in loader:
                task.advance()
                if not self._handle_bad(batch, bad):
                    continue
                images, labels = self.to_device(batch)
                with autocast(self.device, self.precision):
                    logits = self.forward(images)
                loss_sum += self.criterion(logits.float(), labels).sum()
                correct += (logits.argmax(1) == labels).sum()
                examples += labels.numel()
        if examples == 0:
            raise DataError(f"no readable {label} images; run `transferkit check-data` on the data root")
        return EpochStats(loss_sum.item() / examples, correct.item() / examples, examples,
                          time.perf_counter() - start, bad)
