"""Softmax cross-entropy over each query's candidate scores (rerankers)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .base import RetrievalLoss, check_scores
from ..utils import UsageError


@dataclasses.dataclass
class ListwiseSettings:
    temperature: float = 1.0


class ListwiseCrossEntropyLoss(RetrievalLoss):
    """Cross-entropy of each query's positive among its candidates, scores divided by ``temperature``.

    Inputs: ``scores`` [B, C] (a query's group [positive, negatives], or every document of the
    batch for in-batch negatives) and ``targets`` [B], the column of each query's positive.
    Needs ``train_group_size >= 2`` or in-batch candidates. The default for every reranker:
    temperature 1 for raw logits (cross-encoder, LLM), about 0.05 for ColBERT's [-1, 1] scores.
    """

    name = "ce"
    reads = ('scores', 'targets')
    Settings = ListwiseSettings


    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_scores(self.name, scores, targets)
        if scores.shape[1] < 2:
            raise UsageError("ListwiseCrossEntropyLoss needs at least 2 candidates per query (train_group_size >= 2).")
        return F.cross_entropy(scores.float() / self.temperature, targets)
