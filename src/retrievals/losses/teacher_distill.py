"""Knowledge distillation from a teacher embedder: the student learns how the teacher ranks each query's candidates."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from ..utils import UsageError, finite_number
from .base import EMBEDDING_FIELDS, RetrievalLoss, batch_log_softmax

TEACHER_FIELDS = ("teacher_query_embeddings", "teacher_document_embeddings")


class TeacherDistillLoss(RetrievalLoss):
    """``loss`` plus ``weight`` x the KL divergence from the teacher's softmax over each query's candidates to the
    student's; the teacher's scores (cosine, or the dot products of its vectors) at ``teacher_temperature``, the
    student's at the wrapped loss's temperature (a loss without one, the triplet margin loss, is refused).

    Inputs: the wrapped loss's, and the teacher's vectors of the batch's texts in the same rows
    (``teacher_query_embeddings`` [B, t], ``teacher_document_embeddings`` [B * G, t], documents query-major), which
    training reads from the batch (``--teacher_model``: every training text encoded once by the teacher before the
    first step; ``t`` need not be the student's width). Two kinds of student:

    - an embedder loss (``query_embeddings`` [B, d], ``document_embeddings`` [B * G, d]): the softmax over every
      document of the batch (positives, hard negatives, the other queries' documents);
    - a reranker: the model's ``scores`` [B, G] (each query's group, positive first; read from the model's output
      even where the wrapped loss reads other fields, as ColBERT's does) or [B, B * G] (every document of the
      batch): the softmax over those same columns.

    The teacher is frozen: its scores are a target, never trained. Documents of other processes are not used for the
    KL term.

    Use it when a stronger (larger, multilingual or fine-tuned) embedder exists: a small or short embedder (inside
    :class:`MatryoshkaLoss`, at each size) or a reranker with few training queries then learns the teacher's ordering of
    every candidate, not only which one is the positive. ``teacher_temperature`` should suit the teacher's score scale
    (0.01-0.05 for cosine-trained embedders); ``weight`` 0 trains as without a teacher.
    """

    name = "teacher_distill"

    def __init__(self, loss: RetrievalLoss, weight: float = 1.0, teacher_temperature: Optional[float] = None) -> None:
        super().__init__()
        weight = finite_number("distill weight", weight)
        if not hasattr(loss, "temperature"):  # a margin loss: the student's cosines at 1 could never match the teacher
            raise UsageError(f"a teacher needs a loss with a temperature; {loss.name!r} has none (the student's cosines "
                             "at temperature 1 give a near-uniform softmax, which cannot follow the teacher's): use infonce.")
        temperature = float(getattr(loss, "temperature", 1.0)) if teacher_temperature is None else teacher_temperature
        temperature = finite_number("teacher temperature", temperature, positive=True)
        self.loss, self.weight, self.teacher_temperature = loss, weight, temperature
        self.embedder = tuple(loss.reads[:2]) == EMBEDDING_FIELDS
        student = () if self.embedder or "scores" in loss.reads else ("scores",)  # a reranker's scores, always
        # the wrapped loss's optional fields (its text ids) last: the required ones keep their positions
        required = tuple(k for k in loss.reads if k not in loss.optional)
        self.reads = (*required, *student, *TEACHER_FIELDS, *loss.optional)
        self.optional = tuple(loss.optional)

    @property
    def temperature(self) -> float:
        """The student's: the wrapped loss's; a wrapper around this one reads it too."""
        return float(self.loss.temperature)

    def get_config_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "teacher_temperature": self.teacher_temperature,
                "loss": self.loss.get_config_dict()}

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        """The fields of :attr:`reads`, in that order or by name."""
        inputs = {**dict(zip(self.reads, args)), **kwargs}
        missing = [k for k in self.reads if inputs.get(k) is None and k not in self.optional]
        if missing or len(args) > len(self.reads):
            raise UsageError(f"loss {self.name!r} reads {', '.join(self.reads)}; missing {', '.join(missing) or 'none'}.")
        teacher_query_embeddings, teacher_document_embeddings = (inputs[k] for k in TEACHER_FIELDS)
        own = {k: v for k, v in inputs.items() if k in self.loss.reads and v is not None}
        given = (teacher_query_embeddings.shape[0], teacher_document_embeddings.shape[0])
        if self.embedder:
            queries, documents = own[EMBEDDING_FIELDS[0]], own[EMBEDDING_FIELDS[1]]
            fits = given == (queries.shape[0], documents.shape[0])
            batch = f"{queries.shape[0]} and {documents.shape[0]}"
        else:  # a reranker's scores: one row per query, the documents are groups of equal size
            fits = given[0] == inputs["scores"].shape[0] and given[1] % max(1, given[0]) == 0
            batch = f"{inputs['scores'].shape[0]} queries in groups"
        if not fits:
            raise UsageError(f"teacher vectors for {given[0]} queries and {given[1]} documents, the batch has {batch}.")
        base = self.loss(**own)
        if not self.weight:
            return base
        if self.embedder:
            return base + self.weight * self.divergence(queries, documents, teacher_query_embeddings,
                                                        teacher_document_embeddings)
        student = F.log_softmax(inputs["scores"].float() / self.temperature, dim=-1)
        teacher = self.teacher_log_probs(teacher_query_embeddings, teacher_document_embeddings, student.shape[1])
        return base + self.weight * F.kl_div(student, teacher, reduction="batchmean", log_target=True)

    def divergence(self, queries: torch.Tensor, documents: torch.Tensor, teacher_queries: torch.Tensor,
                   teacher_documents: torch.Tensor) -> torch.Tensor:
        """An embedder's KL(teacher || student) of each query's softmax over the batch's documents, averaged over
        queries."""
        teacher = batch_log_softmax(teacher_queries.detach(), teacher_documents.detach(), self.teacher_temperature)
        student = batch_log_softmax(queries, documents, self.temperature)
        return F.kl_div(student, teacher, reduction="batchmean", log_target=True)

    def teacher_log_probs(self, queries: torch.Tensor, documents: torch.Tensor, columns: int) -> torch.Tensor:
        """The teacher's log-softmax over the columns a reranker scored: each query's own group (``columns`` = G) or
        every document of the batch (``columns`` = B * G)."""
        queries, documents = queries.detach().float(), documents.detach().float()
        batch, group = queries.shape[0], documents.shape[0] // max(1, queries.shape[0])
        if columns == documents.shape[0]:
            logits = queries @ documents.T  # every document of the batch
        elif columns == group:
            logits = torch.einsum("bt,bgt->bg", queries, documents.view(batch, group, -1))  # each query's own group
        else:
            raise UsageError(f"reranker scores with {columns} columns: expected the group ({group}) or the batch "
                             f"({documents.shape[0]}).")
        return F.log_softmax(logits / self.teacher_temperature, dim=-1)
