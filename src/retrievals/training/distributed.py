"""Helpers for torchrun / torch.distributed."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist


def world() -> Tuple[int, int]:
    """(rank, world_size), (0, 1) outside distributed runs."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


_GROUP = None


def _negatives_group():
    """A process group of its own for the negatives' collectives, so that they never interleave
    with DDP's gradient all-reduce on the default group (which corrupts gradients under gloo)."""
    global _GROUP
    if _GROUP is None:
        _GROUP = dist.new_group()
    return _GROUP


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every process's gradient of the gathered tensor
    (one all_reduce) and keeps this process's block."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(parts, tensor.contiguous(), group=_negatives_group())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=_negatives_group())
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Concatenate ``tensor`` from every process along dim 0, keeping the autograd graph.

    The gradient reaching this process's block is the sum over all processes' losses, so
    with DDP's gradient averaging the update equals one process training on the global batch.
    Returns the gathered tensor and this process's rank (its block starts at ``rank * len(tensor)``).
    Outside distributed runs it returns ``tensor`` unchanged and rank 0.
    """
    rank, size = world()
    if size == 1:
        return tensor, 0
    return _GatherWithGrad.apply(tensor), rank
