"""The training loop: fit over epochs, train_epoch, evaluate and predict, with callbacks at a few events."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable

import torch
from torch import nn

from transferkit.data.loading import BadImage, Batch, batch_to_device
from transferkit.device import autocast
from transferkit.engine.callbacks import Callback
from transferkit.engine.optimization import Optimization
from transferkit.engine.placement import Placement
from transferkit.errors import DataError, TransferkitError
from transferkit.progress import Progress
from transferkit.seeding import rng_state, seed_epoch, set_rng_state
from transferkit.tasks import Task
from transferkit.tasks.single_label import default_task


class Interrupted(Exception):
    """Training stopped on request after a whole optimizer update; `partial` is the epoch's progress (None at an
    epoch boundary), and `epoch` the epoch a resume continues."""

    def __init__(self, epoch: int, partial: dict | None):
        super().__init__(f"interrupted during epoch {epoch}")
        self.epoch, self.partial = epoch, partial


@dataclass
class EpochStats:
    """Mean loss, the task's metrics, example count and time of one pass over a loader (data wait and step time
    apart). `metrics` holds the task's metrics by name (training: its train_metric alone), `loss` among them.
    An evaluation keeps the split's logits and targets (all processes', on the CPU)."""

    loss: float
    metrics: dict
    examples: int
    seconds: float
    bad: list[BadImage] = field(default_factory=list)
    data_seconds: float = 0.0
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None

    @property
    def accuracy(self) -> float:
        """Accuracy, for a task that reports it (NaN otherwise)."""
        return self.metrics.get("accuracy", float("nan"))

    @property
    def images_per_s(self) -> float:
        """Examples processed per wall-clock second."""
        return self.examples / self.seconds if self.seconds > 0 else 0.0


class Trainer:
    """Fits a model on one device: the optimizer step is `optimization`'s, lifecycle behaviours are callbacks.

    `forward` is what training batches go through (the model itself, a compiled model, only its head on
    cached features, or any of these wrapped in DistributedDataParallel); `eval_forward` what evaluation
    batches go through (default: `forward`); `model` is what is saved and averaged. `batch_transform`
    (MixUp/CutMix) turns a batch's images and labels into mixed images and soft targets. `placement` says
    which of several processes this is: loaders then hold its share, and statistics are summed over all.
    `task` gives the metrics (default: single-label classification). `flip_splits` are the evaluation splits
    evaluated on each image and its mirror image (logits averaged; test-time augmentation).
    """

    def __init__(self, model: nn.Module, optimization: Optimization, *, device: torch.device, seed: int = 0,
                 precision: str = "fp32", forward: nn.Module | None = None, channels_last: bool = False,
                 batch_transform: Callable | None = None, callbacks: Iterable[Callback] = (),
                 progress: Progress | None = None, on_bad_image: str = "fail", placement: Placement | None = None,
                 eval_forward: nn.Module | None = None, flip_splits: Collection[str] = (), task: Task | None = None):
        self.model, self.optimization = model, optimization
        self.task = task if task is not None else default_task()
        self.forward = forward if forward is not None else model
        self.eval_forward = eval_forward if eval_forward is not None else self.forward
        self.placement = placement or Placement()
        self.device, self.seed, self.precision, self.channels_last = device, seed, precision, channels_last
        self.batch_transform = batch_transform
        self.callbacks = list(callbacks)  # in this order (run/connector.py decides it)
        self.progress = progress or Progress(enabled=False)
        self.on_bad_image = on_bad_image
        self.flip_splits = frozenset(flip_splits)
        self.sync_every = 1 if device.type == "cpu" else 16
        self.epoch = 0  # completed epochs
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.partial: dict | None = None  # progress of an interrupted epoch, to continue on resume
        self.stop_reason: str | None = None  # set by a callback to end fit after the current epoch
        self.epochs = 0
        self.eval_loaders: dict = {}
        self.per_epoch: tuple[str, ...] = ()  # the splits of eval_loaders evaluated after every epoch
        self.outputs: dict[str, dict[str, EpochStats]] = {}  # this epoch's evaluations: split -> prefix -> stats
        self.last_bad: list[BadImage] = []

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer the updates go through."""
        return self.optimization.optimizer

    def callback(self, kind: type) -> Callback | None:
        """The first callback of class `kind`, or None."""
        return next((cb for cb in self.callbacks if isinstance(cb, kind)), None)

    def notify(self, event: str, *args) -> None:
        """Call `event` on every callback, in order (what fit does at each event; the run's final test pass too)."""
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (or ready float) images and labels on the device, in the model's memory format."""
        return batch_to_device(batch, self.device, self.channels_last)

    def _handle_bad(self, batch: Batch, bad: list[BadImage]) -> bool:
        """Record unreadable files; stop under on_bad_image=fail. False when the batch is empty."""
        if batch.bad:
            if self.on_bad_image == "fail":
                raise DataError(batch.bad[0].message)
            bad.extend(batch.bad)
        return batch.labels.shape[0] > 0

    def fit(self, train_loader, eval_loaders: dict, epochs: int, should_stop: Callable[[], bool] = lambda: False,
            per_epoch: Collection[str] | None = None) -> list[dict]:
        """Train from the epoch after `self.epoch` up to `epochs`, evaluating the `per_epoch` splits of
        `eval_loaders` (default: all) after every epoch; returns the history. Raises Interrupted once
        `should_stop()` is true (after saving through the callbacks), at the next update boundary."""
        self.eval_loaders, self.epochs = eval_loaders, epochs
        self.per_epoch = tuple(split for split in eval_loaders if per_epoch is None or split in per_epoch)
        place = self.placement
        asked = should_stop

        def should_stop() -> bool:  # every process stops at the same step, whichever got the signal
            return place.agree(asked())

        self.notify("on_fit_start")
        epoch = self.epoch
        while epoch < self.epochs and not self.stop_reason:  # a callback may shorten self.epochs (a budget)
            epoch += 1
            partial, self.partial = self.partial, None
            started = time.perf_counter() - (partial["seconds"] if partial else 0.0)  # a resumed epoch: whole
            if partial is None:
                seed_epoch(self.seed, epoch, place.rank)  # a resumed partial epoch continues from the saved RNG state
            skip = partial["step"] * train_loader.batch_size * place.world_size if partial else 0
            train_loader.sampler.set_epoch(epoch, skip=skip)
            self.notify("on_epoch_start", epoch)
            try:
                train = self.train_epoch(train_loader, epoch, self.epochs, partial, should_stop)
            except Interrupted as stop:
                self.partial = stop.partial
                self.notify("on_interrupt")
                raise
            row = {"epoch": epoch, "train_loss": train.loss, **{f"train_{k}": v for k, v in train.metrics.items()}}
            bad = list(train.bad)
            others = self.other_weights()
            self.outputs = {}
            for split in self.per_epoch:
                self.notify("before_evaluate", split)
                results = self.outputs[split] = self.evaluate_weights(eval_loaders[split], split, others,
                                                                      split in self.flip_splits)
                for prefix, stats in results.items():
                    row.update({f"{prefix}{split}_{name}": value for name, value in stats.metrics.items()})
                bad += results[""].bad
                self.notify("after_evaluate", split, row)
            if place.distributed:
                bad = [item for rank_bad in place.gather(bad) for item in rank_bad]
            epoch_seconds = time.perf_counter() - started
            self.elapsed += epoch_seconds
            row.update(train_images_per_s=train.images_per_s, **self.learning_rates(),
                       data_wait_seconds=train.data_seconds, step_seconds=train.seconds - train.data_seconds,
                       epoch_seconds=epoch_seconds, elapsed_seconds=self.elapsed)
            self.epoch, self.last_bad = epoch, bad
            self.history.append(row)
            self.notify("on_epoch_end", epoch, row)
            if should_stop() and epoch < self.epochs and not self.stop_reason:
                raise Interrupted(epoch + 1, None)
        self.notify("on_fit_end")
        return self.history

    def learning_rates(self) -> dict[str, float]:
        """{"lr_<group>": lr} for every parameter group (backbone, head, ...), as the next update will use it."""
        rates = {}
        for index, group in enumerate(self.optimizer.param_groups):
            name = f"lr_{group.get('name') or index}"
            rates[name if name not in rates else f"{name}_{index}"] = group["lr"]
        return rates

    def train_epoch(self, loader, epoch: int, epochs: int, partial: dict | None = None,
                    should_stop: Callable[[], bool] = lambda: False) -> EpochStats:
        """One pass of training, or its rest after `partial` (a resumed interruption).

        Raises TrainingError at the first non-finite loss (naming epoch and step), and Interrupted at the first
        update boundary once `should_stop()` is true.
        """
        self.model.train()
        opt = self.optimization
        partial = partial or {"step": 0, "loss_sum": 0.0, "correct": 0, "examples": 0, "seconds": 0.0,
                              "data_seconds": 0.0}
        if not self.placement.is_primary:
            partial = {**partial, "loss_sum": 0.0, "correct": 0, "examples": 0}
        loss_sum = torch.tensor(partial["loss_sum"], device=self.device, dtype=torch.float64)
        correct = torch.tensor(partial["correct"], device=self.device, dtype=torch.float64)  # the task's statistic
        pending: list[torch.Tensor] = []
        examples, bad, start = partial["examples"], [], time.perf_counter() - partial["seconds"]
        data_seconds = partial.get("data_seconds", 0.0)
        first_step = partial["step"]
        total_steps = first_step + len(loader)
        step = first_step

        place = self.placement

        def check(losses: list[torch.Tensor]) -> None:  # summed over processes, so all raise at the same step
            opt.check_finite(list(place.sum_tensor(torch.stack(losses)).unbind()) if place.distributed else losses,
                             epoch, step)

        def progress_so_far() -> dict:
            if pending:
                check(pending)
            # the sums of all processes; the primary carries them on after a resume, the others restart at 0
            total_loss, total_correct, total_examples = place.sum([loss_sum.item(), correct.item(), examples],
                                                                  self.device)
            return {"step": step, "steps": total_steps, "loss_sum": total_loss, "correct": total_correct,
                    "examples": int(total_examples), "seconds": time.perf_counter() - start,
                    "data_seconds": data_seconds}

        with self.progress.task(f"epoch {epoch}/{epochs} train", total=total_steps) as task:
            task.advance(first_step)
            batches = iter(loader)
            while True:
                at_boundary = step % opt.accumulate_steps == 0
                if at_boundary and should_stop() and step < total_steps:  # after the last step: the epoch ends
                    raise Interrupted(epoch, progress_so_far())
                waited = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except RuntimeError:
                    if should_stop() and at_boundary:  # Ctrl-C also reached the loader's workers, which then quit
                        if step == total_steps:
                            break  # every batch was trained: the epoch ends, the stop comes at its boundary
                        raise Interrupted(epoch, progress_so_far()) from None
                    raise
                data_seconds += time.perf_counter() - waited
                step += 1
                if not self._handle_bad(batch, bad):
                    task.advance()
                    continue
                images, labels = self.to_device(batch)
                targets = labels
                if self.batch_transform is not None:
                    images, targets = self.batch_transform(images.float(), labels)
                weight = self._loss_weight(labels.shape[0], step == total_steps)
                update = opt.is_update_boundary(step, total_steps)
                logits, losses = opt.step(self.forward, images, targets, update, weight)
                if update:
                    self.notify("after_update", opt.updates)
                batch_loss = losses.sum()
                loss_sum += batch_loss
                correct += self.task.train_statistic(logits, labels)
                examples += labels.shape[0]
                pending.append(batch_loss)
                if len(pending) >= self.sync_every or step == total_steps:
                    check(pending)
                    pending = []
                    seconds = time.perf_counter() - start
                    task.advance(1, loss=loss_sum.item() / examples, rate=examples / max(seconds, 1e-9))
                else:
                    task.advance(1)
        if pending:
            check(pending)
        seconds = time.perf_counter() - start
        total_loss, total_correct, examples = place.sum([loss_sum.item(), correct.item(), examples], self.device)
        examples = int(examples)
        if examples == 0:
            raise DataError("no readable training images; run `transferkit check-data` on the data root")
        return EpochStats(total_loss / examples, {self.task.train_metric: total_correct / examples}, examples, seconds,
                          bad, data_seconds)

    def _loss_weight(self, local: int, last: bool) -> float | None:
        """What this process's loss is multiplied by so that the gradient DDP averages over processes is the
        one-process gradient of the whole global batch: for a sum, the process count; for a mean, in a global
        batch split unevenly (only the epoch's last can be), local count x processes / global count. None: 1."""
        place = self.placement
        if not place.distributed:
            return None
        if self.optimization.loss_reduction == "sum":
            return float(place.world_size)
        if not last:
            return None
        total = int(place.sum([local], self.device)[0])
        return None if local * place.world_size == total else local * place.world_size / max(total, 1)

    def other_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """Weights the callbacks want evaluated beside the model's own, by metric prefix (EMA: {"ema_": ...})."""
        return {prefix: state for cb in self.callbacks for prefix, state in cb.evaluation_weights(self).items()}

    def _eval_logits(self, images: torch.Tensor, flip: bool) -> torch.Tensor:
        with autocast(self.device, self.precision):
            logits = self.eval_forward(images)
            if flip:
                logits = (logits.float() + self.eval_forward(images.flip(-1)).float()) / 2
        return logits.float()

    def _eval_batches(self, loader, label: str, bad: list[BadImage], others: dict, flip: bool):
        """({prefix: logits}, labels) of each readable batch in eval mode, with a progress bar; unreadable files
        into `bad`. Each batch is read once and run through the model's own weights ("") and each of `others`,
        copied into the model in place (so a compiled or wrapped forward sees them) and back."""
        self.model.eval()
        live = self.model.state_dict()  # tensors sharing the model's storage
        names = list(live)
        own = [live[n].detach().clone() for n in names] if others else []
        targets = [live[n] for n in names]
        with self.progress.task(label, total=len(loader)) as task:
            for batch in loader:
                task.advance()
                if not self._handle_bad(batch, bad):
                    continue
                images, labels = self.to_device(batch)
                outputs = {"": self._eval_logits(images, flip)}
                for prefix, state in others.items():
                    try:
                        torch._foreach_copy_(targets, [state[n] for n in names])
                        outputs[prefix] = self._eval_logits(images, flip)
                    finally:
                        torch._foreach_copy_(targets, own)
                yield outputs, labels

    @torch.no_grad()
    def predict_weights(self, loader, label: str = "predict", others: dict | None = None, flip: bool = False
                        ) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[BadImage]]:
        """predict() for the model's own weights ("") and each of `others` ({prefix: state dict}) in one pass
        over the loader: {prefix: logits}, the targets and the unreadable samples."""
        others = others or {}
        logits_all: dict[str, list] = {prefix: [] for prefix in ("", *others)}
        labels_all, bad = [], []
        for outputs, labels in self._eval_batches(loader, label, bad, others, flip):
            for prefix, logits in outputs.items():
                logits_all[prefix].append(logits)
            labels_all.append(labels)
        if not labels_all:
            return {p: torch.empty(0, 0) for p in logits_all}, torch.empty(0, dtype=torch.long), bad
        # one copy to the CPU at the end, no sync per batch
        return {p: torch.cat(parts).cpu() for p, parts in logits_all.items()}, torch.cat(labels_all).cpu(), bad

    @torch.no_grad()
    def predict(self, loader, label: str = "predict", flip: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, list[BadImage]]:
        """Logits (N, outputs) in fp32 on the CPU and targets of every readable sample, in loader order, and the
        unreadable ones; `flip`: each image's logits averaged with its mirror image's."""
        logits, targets, bad = self.predict_weights(loader, label, None, flip)
        return logits[""], targets, bad

    def gathered(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every process's share of a split's logits and targets, concatenated (unchanged with one process)."""
        if not self.placement.distributed:
            return logits, targets
        parts = [part for part in self.placement.gather((logits, targets)) if len(part[1])]
        if not parts:
            return logits, targets
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.no_grad()
    def evaluate_weights(self, loader, label: str = "test", others: dict | None = None, flip: bool = False
                         ) -> dict[str, EpochStats]:
        """evaluate() of the model's own weights ("") and each of `others` ({prefix: state dict}), reading the
        loader once."""
        start = time.perf_counter()
        outputs, targets, bad = self.predict_weights(loader, label, others, flip)
        results = {}
        for prefix, logits in outputs.items():
            logits_all, targets_all = self.gathered(logits, targets)
            if len(targets_all) == 0:
                raise DataError(f"no readable {label} images; run `transferkit check-data` on the data root")
            metrics = self.task.epoch_metrics(logits_all, targets_all)
            results[prefix] = EpochStats(metrics["loss"], metrics, len(targets_all), time.perf_counter() - start, bad,
                                         logits=logits_all, targets=targets_all)
        return results

    @torch.no_grad()
    def evaluate(self, loader, label: str = "test", flip: bool = False) -> EpochStats:
        """The task's metrics over a loader in eval mode (class weights do not weigh the reported loss).

        Each process evaluates its share (every world-th sample); the logits of all are gathered, so every
        sample counts once and split-wide metrics (mAP, R²) see the whole split.
        """
        return self.evaluate_weights(loader, label, None, flip)[""]

    def state_dict(self) -> dict:
        """Everything a resume needs: model, optimizer/scheduler/scaler, progress, history, RNG and callbacks.

        With several processes every one must call it (their RNG states are gathered: `rng` holds one per rank).
        """
        rng = rng_state()
        if self.placement.distributed:
            rng = {"ranks": self.placement.gather(rng)}
        return {"model": self.model.state_dict(), "optimization": self.optimization.state_dict(),
                "epoch": self.epoch, "history": self.history, "seconds": self.elapsed, "partial": self.partial,
                "rng": rng, "world_size": self.placement.world_size, "stop_reason": self.stop_reason,
                "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks}}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned (the RNG too, so the next step draws what it would have).

        Mid-epoch a resume needs the process count that saved it; at an epoch boundary any count will do
        (each epoch re-seeds from (seed, epoch, rank)).
        """
        saved_world, world = state.get("world_size", 1), self.placement.world_size
        if state.get("partial") and saved_world != world:
            raise TransferkitError(f"last.pt stopped mid-epoch with {saved_world} process(es) and this run has "
                                   f"{world}; resume with --nproc {saved_world}")
        self.model.load_state_dict(state["model"])
        self.optimization.load_state_dict(state["optimization"])
        self.epoch, self.history, self.elapsed = state["epoch"], state["history"], state["seconds"]
        self.partial, self.stop_reason = state.get("partial"), state.get("stop_reason")
        for cb in self.callbacks:
            if cb.state_key in state.get("callbacks", {}):
                cb.load_state_dict(state["callbacks"][cb.state_key])
        rng = state["rng"]
        if "ranks" in rng:
            rng = rng["ranks"][self.placement.rank] if self.placement.rank < len(rng["ranks"]) else None
        if rng is not None:
            set_rng_state(rng)
