"""Many processes under torchrun: rank, world size and device of this one, its share of a list, and gathering.

Training (DDP) and inference (`localize` and `evaluate` sharded by rank) use the same context. Without
torchrun's environment everything here is a no-op for one process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size from torchrun's environment; world size 1 without it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every world_size-th, starting at its rank (all of them for one process)."""
        return list(items[self.rank::self.world_size])

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's `value` (picklable) on rank 0, in rank order; None on the other ranks."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the process group. A rank that exits with gloo's threads still running can abort
        ("terminate called without an active exception") and fail the whole torchrun job."""
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); a no-op for one process."""
    size = world_size()
    if size == 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), size, int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(name: str) -> str:
    """The device for this rank: under torchrun, "auto" (and "cuda") mean cuda:LOCAL_RANK when CUDA exists."""
    if world_size() > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return name
