"""Distillation from a teacher embedder, shared by the embedder and reranker pipelines (``--teacher_model``): the
flags, the teacher's vectors of the training texts, the loss wrapper and the collator wrapper, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..data import TeacherCollator, TeacherVectors
from ..data.readers import Record
from ..losses import RetrievalLoss, TeacherDistillLoss
from ..models.base import check_model_path, saved_model_type
from ..utils import UsageError, finite_number, logger
from .fingerprint import weights_digest


@dataclass(kw_only=True)
class TeacherArguments:
    """``--teacher_model`` and its settings; a pipeline's model arguments take these fields (``check_teacher`` in
    their ``__post_init__``)."""

    teacher_model: Optional[str] = field(default=None, metadata={
        "help": "A teacher embedder (folder) whose ranking of each training query's documents the student learns (KL "
                "divergence added to the loss; embedders: over the batch's documents, at every --matryoshka_dims size; "
                "rerankers: over each query's group). Every training text is encoded by it once before the first step."})
    distill_weight: float = field(default=1.0, metadata={"help": "With --teacher_model: weight of the KL term."})
    teacher_temperature: Optional[float] = field(default=None, metadata={
        "help": "With --teacher_model: temperature of the teacher's cosine scores (default: --temperature for "
                "embedders, 0.02 for rerankers: the temperature embedders train at here)."})

    def check_teacher(self) -> None:
        """Refuse wrong teacher flags before any data or weights load."""
        if self.teacher_model is None and (self.distill_weight != 1.0 or self.teacher_temperature is not None):
            raise UsageError("--distill_weight and --teacher_temperature need --teacher_model.")
        finite_number("--distill_weight", self.distill_weight)
        if self.teacher_temperature is not None:
            finite_number("--teacher_temperature", self.teacher_temperature, positive=True)
        if self.teacher_model is not None:
            self.teacher_model = check_model_path(self.teacher_model, "teacher model")
            kind = saved_model_type(self.teacher_model)
            if kind not in (None, "embedding"):
                raise UsageError(f"--teacher_model {self.teacher_model}: a {kind} model; the teacher must be a dense embedder.")

    def teacher_settings(self) -> List[Dict[str, Any]]:
        """For the run's fingerprint: the teacher decides the result as much as the base model, so its weights too."""
        return [{"teacher_weights": weights_digest(self.teacher_model)}] if self.teacher_model else []

    def attach_teacher(self, loss: RetrievalLoss, make: Callable[[Any, Sequence[Record]], Any],
                       query_max_length: Optional[int], document_max_length: Optional[int],
                       default_temperature: float) -> Tuple[RetrievalLoss, Callable[[Any, Sequence[Record]], Any]]:
        """With a teacher: ``loss`` with its KL term, and the collator factory ``make`` (model, records) -> collator
        whose batches also carry the teacher's vectors (the teacher's confidence on the training records is logged);
        the teacher's temperature is ``--teacher_temperature``, else ``default_temperature``. Without: both as given."""
        if not self.teacher_model:
            return loss, make
        path = self.teacher_model
        temperature = self.teacher_temperature if self.teacher_temperature is not None else default_temperature

        def factory(model: Any, records: Sequence[Record]) -> Any:
            vectors = encode_with_teacher(path, records, query_max_length, document_max_length)
            confidence = teacher_confidence(vectors, records, temperature)
            if confidence is not None:
                logger.warning("--teacher_model: its softmax over each training query's positive and negatives (temperature "
                               "%g) gives the positive %.3f on average; near 1 it teaches little beyond the labels "
                               "(a teacher trained on these queries, or too low a --teacher_temperature).", temperature,
                               confidence)
            return TeacherCollator(make(model, records), vectors)
        return TeacherDistillLoss(loss, self.distill_weight, temperature), factory


def teacher_confidence(vectors: TeacherVectors, records: Sequence[Record], temperature: float) -> Optional[float]:
    """The mean probability the teacher's softmax (its scores / ``temperature``) gives each record's first positive
    among that positive and the record's negatives; None without negatives."""
    import torch

    values = []
    for r in records:
        if not r.negatives:
            continue
        rows = vectors.rows([r.query], [r.positives[0], *r.negatives])
        scores = rows["teacher_query_embeddings"] @ rows["teacher_document_embeddings"].T / temperature
        values.append(torch.softmax(scores[0], dim=-1)[0].item())
    return sum(values) / len(values) if values else None


def encode_with_teacher(path: str, records: Sequence[Record], query_max_length: Optional[int],
                        document_max_length: Optional[int]) -> TeacherVectors:
    """Every distinct query and document of the training records (positives and negatives) encoded once by the
    teacher at the student's maximum lengths (the student never sees more of a text)."""
    import torch

    from ..models.embedding import AutoModelForEmbedding
    from ..models.sparse import SparseEmbedder

    model = AutoModelForEmbedding.from_pretrained(path, query_max_length=query_max_length,
                                                  document_max_length=document_max_length)
    if isinstance(model, SparseEmbedder):
        raise UsageError(f"--teacher_model {path}: a sparse embedder; the teacher must be a dense one.")
    queries = list(dict.fromkeys(r.query for r in records))
    documents = list(dict.fromkeys(d for r in records for d in (*r.positives, *r.negatives)))
    logger.warning("--teacher_model: encoding %d queries and %d documents with %s", len(queries), len(documents), path)
    vectors = TeacherVectors(queries, torch.from_numpy(model.encode(queries, is_query=True, show_progress_bar=True)),
                             documents, torch.from_numpy(model.encode(documents, show_progress_bar=True)))
    del model
    return vectors
