"""Triplet margin loss for embedders."""

from __future__ import annotations

import dataclasses

import torch

from .base import RetrievalLoss
from ..utils import UsageError


@dataclasses.dataclass
class TripletSettings:
    margin: float = 0.2


class TripletMarginLoss(RetrievalLoss):
    """Hinge on ``margin + s(q, negative) - s(q, positive)`` with s the dot product (cosine if normalised).

    Inputs: ``query_embeddings`` [B, d] and ``document_embeddings`` [B * G, d] query-major with
    ``G >= 2`` (positive first, then hard negatives); every negative of the group contributes.
    Use it when the data has reliable hard negatives and no in-batch negatives are wanted.
    """

    name = "triplet"
    reads = ('query_embeddings', 'document_embeddings')
    Settings = TripletSettings


    def forward(self, query_embeddings: torch.Tensor, document_embeddings: torch.Tensor) -> torch.Tensor:
        batch = query_embeddings.shape[0]
        group = document_embeddings.shape[0] // batch
        if group < 2:
            raise UsageError("The triplet loss needs train_group_size >= 2 (a positive and at least one negative).")
        scores = torch.einsum("bd,bgd->bg", query_embeddings.float(), document_embeddings.float().view(batch, group, -1))
        return torch.relu(self.margin - scores[:, :1] + scores[:, 1:]).mean()
