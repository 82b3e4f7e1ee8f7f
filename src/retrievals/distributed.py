"""Helpers for torchrun / torch.distributed."""

from __future__ import annotations

import gc
import os
from typing import Tuple

import torch
import torch.distributed as dist


def world() -> Tuple[int, int]:
    """(rank, world_size), (0, 1) outside distributed runs."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Concatenate ``tensor`` from every process along dim 0, keeping the autograd graph.

    The gradient reaching this process's block sums every process's loss, so with DDP's gradient
    averaging the update equals one process training on the global batch. Returns the gathered
    tensor and this process's rank (its block starts at ``rank * len(tensor)``); outside
    distributed runs, ``tensor`` unchanged and rank 0.
    """
    rank, size = world()
    if size == 1:
        return tensor, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0), rank


def shutdown_distributed() -> None:
    """Destroy the default process group, if any, after freeing objects that hold it.

    Called at the end of a torchrun pipeline. Without it the group is freed during interpreter
    teardown, possibly from a DDP reducer's destructor that holds the GIL while gloo's worker
    threads need it: the process then hangs instead of exiting.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def init_distributed() -> None:
    """Start the default process group under torchrun (gloo on CPU, nccl on GPUs) for pipelines that
    do not go through the Trainer; a no-op for a single process or when already started."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
