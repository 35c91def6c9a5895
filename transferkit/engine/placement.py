"""Where a run's work goes: one process, or one of several started by torchrun (torch.distributed).

`Placement()` is the single-process case, where every method is a no-op. `Placement.from_env()` reads
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and joins the process group:
NCCL for CUDA tensors, gloo for CPU ones. The engine asks it to wrap the model (DistributedDataParallel),
to sum statistics over processes, to agree on stopping, and whether this process is the one that writes.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from torch import nn

from transferkit.data.loading import Shard
from transferkit.errors import SpecError


def launched_by_torchrun() -> bool:
    """True in a process torchrun started (it sets RANK and WORLD_SIZE), even with one process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


class Placement:
    """Rank, world size and local rank of this process, and the collectives the engine needs."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, distributed: bool = False,
                 local_world_size: int = 1):
        self.rank, self.world_size, self.local_rank, self.distributed = rank, world_size, local_rank, distributed
        self.local_world_size = local_world_size  # processes on this machine (they share its cores)

    @classmethod
    def from_env(cls) -> "Placement":
        """Join torchrun's process group when launched by it (once per process); else the single-process placement."""
        if not launched_by_torchrun():
            return cls()
        import torch.distributed as dist

        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(local_rank)
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend, timeout=timedelta(minutes=30))
        return cls(rank, world, local_rank, distributed=True,
                   local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))

    @property
    def is_primary(self) -> bool:
        """True for the one process that writes the run directory, checkpoints and the console."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device this process uses: its own GPU (LOCAL_RANK) when the run is on CUDA."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def check_batch(self, batch_size: int | str, field: str = "data.batch_size") -> None:
        """SpecError unless the global batch splits evenly over the processes."""
        n = self.world_size
        if batch_size == "auto":
            if n > 1:  # each process would measure its own free memory, and they must agree on one batch
                raise SpecError(f"{field}: auto picks a batch for one process; with {n} processes give the global "
                                f"batch as a number that divides by {n}")
            return
        if batch_size % n:
            below, above = batch_size // n * n, (batch_size // n + 1) * n
            nearest = f"{below} or {above}" if below else f"{above}"
            raise SpecError(f"{field}: {batch_size} is the global batch and does not divide over {n} processes; "
                            f"use {nearest}")

    def wrap(self, module: nn.Module, sync_batchnorm: bool = False, find_unused: bool = False) -> nn.Module:
        """The module as the training step calls it: DistributedDataParallel over the processes (as is, alone).

        With `sync_batchnorm` batch norm layers are replaced in place (same parameters and buffers) by
        SyncBatchNorm, which computes batch statistics over the whole global batch. `find_unused`: some
        parameters get no gradient in some steps (a freeze schedule), which DDP must then look for.
        """
        if not self.distributed:
            return module
        if sync_batchnorm:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        device = next(module.parameters()).device
        ids = [device] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sums of `values` over all processes (float64)."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device(device))
        dist.all_reduce(tensor)
        return tensor.tolist()

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """A copy of `tensor` summed over all processes."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        out = tensor.detach().clone()
        dist.all_reduce(out)
        return out

    def agree(self, flag: bool) -> bool:
        """True on every process when it is true on any: all stop at the same step."""
        if not self.distributed:
            return flag
        import torch.distributed as dist

        tensor = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def gather(self, obj) -> list:
        """Every process's `obj`, in rank order, on every process ([obj] alone)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """The primary's `obj` on every process."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @property
    def shard(self) -> Shard:
        """This process's share of the data: rank and world size, for samplers and the device bank."""
        return Shard(self.rank, self.world_size)

    def close(self) -> None:
        """Leave the process group."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    @staticmethod
    def _comm_device(device: torch.device) -> torch.device:
        return device if device.type == "cuda" else torch.device("cpu")
