"""Pointwise binary cross-entropy on reranker scores."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..utils import UsageError
from .base import RetrievalLoss, check_scores


@dataclasses.dataclass
class PointwiseSettings:
    temperature: float = 1.0


class PointwiseBCELoss(RetrievalLoss):
    """Each (query, candidate) is a binary example: label 1 for the positive, 0 for the rest.

    Inputs: ``scores`` [B, C] (logits) and ``targets`` [B], the column of each query's positive.
    Requires groups with negatives (a group of the positive alone has only label 1: the model would learn to score
    everything high; refused). The probability it trains is ``sigmoid(score / temperature)``: at temperature 1 (the
    cross-encoder's and LLM reranker's default) that is what ``compute_score(normalize=True)`` returns, a calibrated
    probability; at another temperature, and for ColBERT (whose ``normalize=True`` maps its [-1, 1] MaxSim to [0, 1]),
    it is not. The listwise loss usually ranks better.
    """

    name = "bce"
    reads = ('scores', 'targets')
    Settings = PointwiseSettings


    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_scores(self.name, scores, targets)
        if scores.shape[1] < 2:
            raise UsageError("loss 'bce' needs train_group_size >= 2 (a positive and negatives): with the positive alone "
                             "every label is 1 and the model learns to score everything high.")
        labels = torch.zeros_like(scores, dtype=torch.float32)
        labels[torch.arange(scores.shape[0], device=scores.device), targets] = 1.0
        return F.binary_cross_entropy_with_logits(scores.float() / self.temperature, labels)
