"""Triplet margin loss for embedders."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .base import TEXT_IDS, RetrievalLoss, check_text_ids, groups
from ..utils import UsageError


@dataclasses.dataclass
class TripletSettings:
    margin: float = 0.2


class TripletMarginLoss(RetrievalLoss):
    """Hinge on ``margin + s(q, negative) - s(q, positive)`` with s the dot product (cosine if normalised).

    Inputs: ``query_embeddings`` [B, d] and ``document_embeddings`` [B * G, d] query-major with
    ``G >= 2`` (positive first, then hard negatives); every negative of the group contributes.
    Use it when the data has reliable hard negatives and no in-batch negatives are wanted. With ``document_text_ids``
    [B * G] (optional, ids equal for equal texts), a negative that is a copy of the group's positive is left out.
    """

    name = "triplet"
    reads = ('query_embeddings', 'document_embeddings', TEXT_IDS)
    optional = (TEXT_IDS,)
    Settings = TripletSettings

    def forward(self, query_embeddings: torch.Tensor, document_embeddings: torch.Tensor,
                document_text_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, group = groups(self.name, query_embeddings, document_embeddings)
        if group < 2:
            raise UsageError("The triplet loss needs train_group_size >= 2 (a positive and at least one negative).")
        scores = torch.einsum("bd,bgd->bg", query_embeddings.float(), document_embeddings.float().view(batch, group, -1))
        hinge = torch.relu(self.margin - scores[:, :1] + scores[:, 1:])
        if document_text_ids is None:
            return hinge.mean()
        # a "negative" equal to the positive would only push a text away from itself: averaged over the others
        ids = check_text_ids(document_text_ids, batch * group).to(hinge.device).view(batch, group)
        keep = ids[:, 1:] != ids[:, :1]
        return (hinge * keep).sum() / keep.sum().clamp(min=1)
