"""Process-group setup for ``torchrun`` / ``accelerate launch`` (DDP), and the same API for a single process."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """rank / world_size of this process and its device; ``enabled`` when a process group is running."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    enabled: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (no-op in a single process); returns the tensor."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def setup_distributed(device: str | None = None) -> DistContext:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe in the environment (WORLD_SIZE,
    RANK, LOCAL_RANK, MASTER_ADDR/PORT): NCCL on GPUs, gloo on CPU. Without WORLD_SIZE > 1: a single process.

    device: "cpu", "cuda" or None (CUDA when available).
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but no CUDA device is available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"inconsistent WORLD_SIZE={world_size} / RANK={rank} in the environment")
    enabled = world_size > 1
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world_size, local_rank, dev, enabled)


def teardown_distributed(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
