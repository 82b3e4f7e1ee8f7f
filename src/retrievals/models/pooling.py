"""Pooling of token states into one vector per text, correct for left and right padding."""

from __future__ import annotations

import torch
from ..utils import UsageError

POOLING_METHODS = ("cls", "mean", "last")


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the first real token of each row (0 with right padding)."""
    return attention_mask.to(torch.long).argmax(dim=-1)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, whatever the padding side."""
    seq_len = attention_mask.shape[-1]
    return seq_len - 1 - attention_mask.to(torch.long).flip(-1).argmax(dim=-1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool ``hidden`` [batch, seq, dim] with ``attention_mask`` [batch, seq] by ``method``.

    ``cls`` takes the first real token, ``mean`` averages real tokens and ``last`` takes the last
    real token (decoder LLMs). Padding may be on either side; a row without a real token pools to zeros (``last``,
    ``mean``) or its first slot (``cls``, as sentence-transformers).
    """
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if method == "cls":  # encoders, padded right: a row with nothing to pool takes slot 0, as sentence-transformers
        return hidden[rows, first_token_index(attention_mask)]
    if method == "last":
        # a row with nothing to pool (a text all prompt with include_prompt=False) took the last slot, a pad whose
        # state depends on the rest of the batch: zeros instead, as sentence-transformers (and mean pooling) give
        out = hidden[rows, last_token_index(attention_mask)]
        return torch.where(attention_mask.any(dim=-1, keepdim=True), out, torch.zeros_like(out))
    if method == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    raise UsageError(f"Unknown pooling_method {method!r}; choose one of {list(POOLING_METHODS)}.")
