"""Matryoshka representation learning: one embedder loss applied at several leading dimensions."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..inputs import check_int
from ..models.embedding import truncate_embeddings
from ..utils import UsageError, finite_number
from .base import EMBEDDING_FIELDS, RetrievalLoss, WrappingLoss, batch_log_softmax


class MatryoshkaLoss(WrappingLoss):
    """Weighted sum of ``loss`` on the first ``d`` dimensions of the embeddings, for each ``d`` in ``dims``, so one
    model serves every one of those sizes (``encode(..., truncate_dim=d)``, the server's ``dimensions``).

    Inputs: those of the wrapped embedder loss (``query_embeddings``, ``document_embeddings``, and any other field it
    reads, such as :class:`TeacherDistillLoss`'s teacher vectors, passed on as they are). Vectors are truncated as the
    model serves them (:func:`retrievals.models.embedding.truncate_embeddings`): renormalised when ``normalize`` (the
    model normalises its embeddings; the training pipeline sets it from the model), else sliced, so what a size
    learns is what it serves. Use it when the model must also serve shorter vectors; weights default to 1.

    ``distill`` > 0 adds self-distillation: at each smaller size, the KL divergence from the full vectors' softmax over
    the batch's documents (each query against every document of the batch, the full scores detached: a teacher, not a
    target that moves toward the student) to the truncated vectors' one, at the wrapped loss's temperature (a loss
    without one, the triplet margin loss, is refused), times ``distill`` and that size's weight. The small sizes then learn how the full vector ranks every
    candidate, not only which one is the positive. Documents of other processes are not used for it.
    """

    name = "matryoshka"
    reads = EMBEDDING_FIELDS

    def __init__(self, loss: RetrievalLoss, dims: Sequence[int], weights: Optional[Sequence[float]] = None,
                 distill: float = 0.0, normalize: bool = True) -> None:
        super().__init__()
        # whole numbers only: int(16.9) would train size 16 and int(True) size 1, silently
        dims = [check_int(f"matryoshka dims[{i}]", d, 1) for i, d in enumerate(dims)]
        if not dims or len(set(dims)) != len(dims):
            raise UsageError(f"matryoshka dims must be distinct integers >= 1, got {dims}.")
        # finite: an inf weight makes every step's loss inf, which training then skips step after step
        weights = [1.0] * len(dims) if not weights else \
            [finite_number(f"matryoshka weights[{i}]", w, positive=True) for i, w in enumerate(weights)]
        if len(weights) != len(dims):
            raise UsageError(f"matryoshka weights must be {len(dims)} numbers (one per dim), got {weights}.")
        if tuple(loss.reads[:2]) != EMBEDDING_FIELDS:
            raise UsageError(f"matryoshka wraps an embedder loss, not {loss.name!r}.")
        self.reads = tuple(loss.reads)  # and whatever else the wrapped loss reads (a teacher's vectors), untruncated
        self.optional = tuple(loss.optional)
        distill = finite_number("matryoshka distill", distill)
        if distill and not hasattr(loss, "temperature"):  # softmaxes of cosines at 1: near uniform on both sides
            raise UsageError(f"matryoshka distill needs a loss with a temperature; {loss.name!r} has none (its cosines "
                             "at temperature 1 give near-uniform softmaxes, nothing to distil): use infonce.")
        self.loss, self.dims, self.weights, self.distill = loss, dims, weights, distill
        self.normalize = bool(normalize)

    def get_config_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "dims": list(self.dims), "weights": list(self.weights), "distill": self.distill,
                "normalize": self.normalize, "loss": self.loss.get_config_dict()}

    def truncate(self, embeddings: torch.Tensor, dim: int) -> torch.Tensor:
        """The first ``dim`` dimensions as the model serves them."""
        return truncate_embeddings(embeddings, dim, self.normalize)

    def forward(self, query_embeddings: torch.Tensor, document_embeddings: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        full = query_embeddings.shape[-1]
        if max(self.dims) > full:
            raise UsageError(f"matryoshka dims {self.dims} exceed the embedding size {full}.")
        teacher = self._log_softmax(query_embeddings, document_embeddings).detach() if self.distill else None
        total: List[torch.Tensor] = []
        for dim, weight in zip(self.dims, self.weights):
            q, d = self.truncate(query_embeddings, dim), self.truncate(document_embeddings, dim)
            total.append(weight * self.loss(q, d, **extra))
            if teacher is not None and dim < full:
                student = self._log_softmax(q, d)
                total.append(weight * self.distill * F.kl_div(student, teacher, reduction="batchmean", log_target=True))
        return torch.stack(total).sum()

    def _log_softmax(self, queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
        """Each query's log-probabilities over every document of the batch, at the wrapped loss's temperature."""
        return batch_log_softmax(queries, documents, float(getattr(self.loss, "temperature", 1.0)))
