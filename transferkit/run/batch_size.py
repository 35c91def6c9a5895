"""data.batch_size: auto, and the check that a fixed batch fits: memory per image measured on the model itself.

The activations a training step keeps for backward are counted exactly, with autograd's saved-tensor
hooks, in one forward pass of two images; with the weights, their gradients and the optimizer's state
that gives a step's peak, which is set against the device's free memory with a stated margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferkit.errors import SpecError
from transferkit.model.transfer import TransferModel

MARGIN = 0.7  # share of the free memory a training step may plan to use
TRANSIENT = 1.25  # a step's peak over the saved activations: backward's temporaries and the batch itself
MAX_AUTO = 256


@dataclass
class MemoryEstimate:
    """Bytes one training step needs: fixed (weights, gradients, optimizer state) plus per image."""

    fixed: int
    per_image: int
    available: int

    def step_bytes(self, batch: int) -> int:
        """Planned peak of a step at `batch` images."""
        return self.fixed + batch * self.per_image

    def largest_batch(self, limit: int = MAX_AUTO) -> int:
        """The largest power of two (at most `limit`) whose step fits in MARGIN of the free memory."""
        room = MARGIN * self.available - self.fixed
        batch = 1
        while batch * 2 <= limit and (batch * 2) * self.per_image <= room:
            batch *= 2
        return batch


def available_memory(device: torch.device) -> int:
    """Free bytes: the GPU's free memory on CUDA, else the machine's available RAM (MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as info:
            fields = dict(line.split(":", 1) for line in info)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import os
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def measure(model: TransferModel, input_size: int, device: torch.device, optimizer_slots: int,
            channels_last: bool = False) -> MemoryEstimate:
    """Saved activations of a two-image forward pass (exact), weights, gradients and `optimizer_slots`
    tensors of optimizer state per trainable weight."""
    storages: dict[int, int] = {}  # a tensor saved by several ops (or views of one) is held once

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    images = torch.zeros(2, 3, input_size, input_size, dtype=torch.uint8, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    buffers = {name: value.clone() for name, value in model.named_buffers()}  # batch-norm statistics stay put
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(images)
    with torch.no_grad():
        for name, value in model.named_buffers():
            value.copy_(buffers[name])
    model.train(was_training)
    saved = sum(storages.values())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    fixed = weights + trainable * (1 + optimizer_slots)
    return MemoryEstimate(fixed, int(TRANSIENT * saved / 2) + 3 * input_size * input_size * 4,
                          available_memory(device))


def optimizer_slots(name: str, momentum: float) -> int:
    """State tensors per weight: AdamW keeps two, SGD with momentum one, plain SGD none."""
    return 2 if name == "adamw" else (1 if momentum > 0 else 0)


def resolve_batch_size(requested: int | str, estimate: MemoryEstimate, train_images: int) -> int:
    """data.batch_size resolved: auto -> the largest batch that fits; a fixed one is checked against the memory."""
    if requested == "auto":
        return max(1, min(estimate.largest_batch(), train_images))
    need = estimate.step_bytes(int(requested))
    if need > MARGIN * estimate.available:
        fits = estimate.largest_batch(limit=int(requested))
        raise SpecError(f"data.batch_size: {requested} needs about {need / 1e9:.1f} GB for a training step and "
                        f"{estimate.available / 1e9:.1f} GB are free ({MARGIN:.0%} of it planned for); use "
                        f"--set data.batch_size={fits}, or data.batch_size: auto")
    return int(requested)
