"""FLOPS regularisation for sparse (SPLADE) embedders."""

from __future__ import annotations

from typing import Any, Dict

import torch

from ..utils import finite_number
from .base import RetrievalLoss, WrappingLoss


class FlopsRegularizedLoss(WrappingLoss):
    """``loss`` plus ``query_weight * FLOPS(queries) + document_weight * FLOPS(documents)``, where FLOPS is the sum over
    vocabulary terms of the squared mean weight in the batch: it pushes terms to zero across texts, so vectors stay
    sparse and an inverted index stays fast (Paria et al., 2020; SPLADE). Inputs: those of the wrapped loss
    (``query_embeddings``, ``document_embeddings``: [B, vocab] non-negative term weights, and any other field it
    reads, such as the documents' text ids, passed on as they are). Documents usually take a smaller weight than
    queries (longer expansions are cheaper at query time than long queries). Weights must be finite and >= 0: a nan
    or inf weight makes every step's loss nan or inf."""

    name = "flops"
    reads = ("query_embeddings", "document_embeddings")

    def __init__(self, loss: RetrievalLoss, query_weight: float = 5e-4, document_weight: float = 1e-4) -> None:
        super().__init__()
        query_weight = finite_number("FLOPS query_weight", query_weight)
        document_weight = finite_number("FLOPS document_weight", document_weight)
        self.loss, self.query_weight, self.document_weight = loss, query_weight, document_weight
        self.reads, self.optional = tuple(loss.reads), tuple(loss.optional)  # whatever else the wrapped loss reads

    def get_config_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "query_weight": self.query_weight, "document_weight": self.document_weight,
                "loss": self.loss.get_config_dict()}

    @staticmethod
    def flops(weights: torch.Tensor) -> torch.Tensor:
        return (weights.float().mean(dim=0) ** 2).sum()

    def forward(self, query_embeddings: torch.Tensor, document_embeddings: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        return (self.loss(query_embeddings, document_embeddings, **extra) + self.query_weight * self.flops(query_embeddings)
                + self.document_weight * self.flops(document_embeddings))
