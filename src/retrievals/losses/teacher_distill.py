"""Knowledge distillation from a teacher embedder: the student learns how the teacher ranks the batch's documents."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from ..utils import UsageError
from .base import EMBEDDING_FIELDS, RetrievalLoss, batch_log_softmax

TEACHER_FIELDS = ("teacher_query_embeddings", "teacher_document_embeddings")


class TeacherDistillLoss(RetrievalLoss):
    """``loss`` plus ``weight`` x the KL divergence from the teacher's softmax over the batch's documents to the
    student's: each query against every document of the batch (positives, hard negatives and the other queries'
    documents), the teacher's scores at ``teacher_temperature``, the student's at the wrapped loss's temperature
    (1 if it has none).

    Inputs: the wrapped embedder loss's (``query_embeddings`` [B, d], ``document_embeddings`` [B * G, d]) and the
    teacher's vectors of the same texts in the same rows (``teacher_query_embeddings`` [B, t],
    ``teacher_document_embeddings`` [B * G, t]; ``t`` may differ from ``d``), which training reads from the batch
    (``--teacher_model``: every training text encoded once by the teacher before the first step). The teacher is
    frozen: its scores are a target, never trained. Documents of other processes are not used for the KL term.

    Use it when a stronger (larger, multilingual, or fine-tuned) embedder exists and the student must be small or
    short (inside :class:`MatryoshkaLoss`, each size learns the teacher's ranking): the student learns the teacher's
    ordering of every candidate, not only which one is the positive. ``teacher_temperature`` should suit the
    teacher's score scale (0.01-0.05 for cosine-trained embedders); ``weight`` 0 trains as without a teacher.
    """

    name = "teacher_distill"

    def __init__(self, loss: RetrievalLoss, weight: float = 1.0, teacher_temperature: Optional[float] = None) -> None:
        super().__init__()
        if tuple(loss.reads[:2]) != EMBEDDING_FIELDS:
            raise UsageError(f"teacher distillation wraps an embedder loss, not {loss.name!r}.")
        if isinstance(weight, bool) or not (isinstance(weight, (int, float)) and 0 <= weight < float("inf")):
            raise UsageError(f"distill weight must be a finite number >= 0, got {weight!r}.")
        temperature = float(getattr(loss, "temperature", 1.0)) if teacher_temperature is None else teacher_temperature
        if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
            raise UsageError(f"teacher temperature must be a finite number > 0, got {teacher_temperature!r}.")
        self.loss, self.weight, self.teacher_temperature = loss, float(weight), float(temperature)
        self.reads = (*loss.reads, *TEACHER_FIELDS)

    @property
    def temperature(self) -> float:
        """The student's: the wrapped loss's (1 if it has none); a wrapper around this one reads it too."""
        return float(getattr(self.loss, "temperature", 1.0))

    def get_config_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "teacher_temperature": self.teacher_temperature,
                "loss": self.loss.get_config_dict()}

    def forward(self, query_embeddings: torch.Tensor, document_embeddings: torch.Tensor,
                teacher_query_embeddings: torch.Tensor, teacher_document_embeddings: torch.Tensor) -> torch.Tensor:
        if teacher_query_embeddings.shape[0] != query_embeddings.shape[0] or \
                teacher_document_embeddings.shape[0] != document_embeddings.shape[0]:
            raise UsageError(f"teacher vectors for {teacher_query_embeddings.shape[0]} queries and "
                             f"{teacher_document_embeddings.shape[0]} documents, the batch has {query_embeddings.shape[0]} "
                             f"and {document_embeddings.shape[0]}.")
        base = self.loss(query_embeddings, document_embeddings)
        if not self.weight:
            return base
        return base + self.weight * self.divergence(query_embeddings, document_embeddings, teacher_query_embeddings,
                                                    teacher_document_embeddings)

    def divergence(self, queries: torch.Tensor, documents: torch.Tensor, teacher_queries: torch.Tensor,
                   teacher_documents: torch.Tensor) -> torch.Tensor:
        """KL(teacher || student) of each query's softmax over the batch's documents, averaged over queries."""
        teacher = batch_log_softmax(teacher_queries.detach(), teacher_documents.detach(), self.teacher_temperature)
        student = batch_log_softmax(queries, documents, self.temperature)
        return F.kl_div(student, teacher, reduction="batchmean", log_target=True)
