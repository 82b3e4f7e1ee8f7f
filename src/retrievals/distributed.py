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

    parts = [_ContiguousGrad.apply(part) for part in all_gather(tensor.contiguous())]
    return torch.cat(parts, dim=0), rank


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous: the backward of torch.distributed.nn's all_gather
    sends the gradients with all_to_all, which on gloo sends a non-contiguous gradient (as an einsum's backward
    gives for token vectors) wrongly, silently."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad.contiguous()


def gather_padded_with_grad(vectors: torch.Tensor, mask: torch.Tensor) -> Tuple[Tuple[torch.Tensor, torch.Tensor], int]:
    """:func:`gather_with_grad` for token vectors [N, L, dim] whose length L differs between processes: each
    pads to the longest L (mask 0 there) first. Returns ((vectors, mask), rank); unchanged outside distributed runs."""
    rank, size = world()
    if size == 1:
        return (vectors, mask), 0
    length = torch.tensor([vectors.shape[1]], device=vectors.device)
    lengths = [torch.zeros_like(length) for _ in range(size)]
    dist.all_gather(lengths, length)
    longest = int(max(int(x) for x in lengths))
    pad = longest - vectors.shape[1]
    if pad:
        vectors = torch.nn.functional.pad(vectors, (0, 0, 0, pad))
        mask = torch.nn.functional.pad(mask, (0, pad))
    gathered, rank = gather_with_grad(vectors)
    masks, _ = gather_with_grad(mask.to(vectors.dtype))
    return (gathered, masks), rank


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
