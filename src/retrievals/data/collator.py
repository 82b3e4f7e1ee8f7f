"""Collators: tokenize with the model's own tokenization and pad per batch (dynamic padding)."""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Sequence

import torch

TEXT_IDS = "document_text_ids"  # the field the softmax losses read (retrievals.losses.base.TEXT_IDS)


def hash_text_ids(texts: Sequence[str]) -> torch.Tensor:
    """One int64 per text, equal for equal texts: the first 8 bytes of its BLAKE2b digest. A digest, not Python's
    ``hash`` (salted per process), so the ids of copies of one document on different processes match when a loss
    gathers them across devices; two different texts share an id with probability about 2^-64."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                                        "little", signed=True) for t in texts], dtype=torch.long)


class EmbeddingCollator:
    """Turn ``[{"query", "documents"}]`` items into ``{"query": batch, "document": batch}``.

    Documents are flattened query-major: row ``i * group + j`` is document ``j`` of query ``i``
    (``j == 0`` is the positive). Tokenization goes through ``model.processor`` so training sees
    exactly what inference sees (instructions, truncation, EOS). ``pad_to_multiple_of`` rounds the padded
    widths up (see :class:`retrievals.models.processing.PaddingOptions`).

    Wrap it in :class:`TextIdsCollator` to leave copies of a positive out of the softmax.
    """

    def __init__(self, processor: Any, pad_to_multiple_of: Optional[int] = None) -> None:
        # a TextProcessor (``model.processor``); a copy when padding differs, so inference keeps its own
        self.processor = processor if pad_to_multiple_of is None else processor.with_pad_to_multiple_of(pad_to_multiple_of)

    def __call__(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        queries = [item["query"] for item in items]
        documents = [doc for item in items for doc in item["documents"]]
        return {
            "query": self.processor.pad(self.processor.tokenize(queries, is_query=True)),
            "document": self.processor.pad(self.processor.tokenize(documents, is_query=False)),
        }


class TextIdsCollator:
    """Any training collator of ``[{"query", "documents"}]`` items (an embedder's, ColBERT's processor), whose
    batches also carry ``document_text_ids`` [B * G] (:func:`hash_text_ids` of each document row, query-major),
    which the in-batch softmax losses read to leave out a column holding another copy of a query's own positive:
    queries sharing one answer (FAQ data) would otherwise each score the other's copy of their own positive as a
    negative (``--mask_duplicate_positives``). The model never sees the field: the trainer routes it to the loss,
    which must read it (``"document_text_ids" in loss.reads``)."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        batch = dict(self.collator(items))
        batch[TEXT_IDS] = hash_text_ids([doc for item in items for doc in item["documents"]])
        return batch


class TeacherCollator:
    """Any training collator of ``[{"query", "documents"}]`` items (an embedder's, a reranker's processor), whose
    batches also carry a teacher's vectors of the same texts in the same rows (``teacher_query_embeddings`` [B, t],
    ``teacher_document_embeddings`` [B * G, t], documents query-major): the loss reads them from the batch
    (:class:`retrievals.losses.TeacherDistillLoss`), the model never sees them."""

    def __init__(self, collator: Any, teacher: "TeacherVectors") -> None:
        self.collator, self.teacher = collator, teacher

    def __call__(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        batch = dict(self.collator(items))
        batch.update(self.teacher.rows([item["query"] for item in items], [d for item in items for d in item["documents"]]))
        return batch


class TeacherVectors:
    """A teacher embedder's vectors of the training texts, looked up by text: queries and documents apart (a text
    that is both is encoded once as each, the teacher's instructions differing). Built once before training
    (``--teacher_model``), read by :class:`TeacherCollator` into ``teacher_query_embeddings`` and
    ``teacher_document_embeddings``."""

    def __init__(self, queries: Sequence[str], query_vectors: torch.Tensor, documents: Sequence[str],
                 document_vectors: torch.Tensor) -> None:
        if len(queries) != len(query_vectors) or len(documents) != len(document_vectors):
            raise ValueError(f"{len(queries)} queries / {len(documents)} documents with {len(query_vectors)} / "
                             f"{len(document_vectors)} vectors.")
        self.query_row = {text: i for i, text in enumerate(queries)}
        self.document_row = {text: i for i, text in enumerate(documents)}
        self.query_vectors = query_vectors.float().contiguous()
        self.document_vectors = document_vectors.float().contiguous()
        for what, texts, vectors in (("query", queries, self.query_vectors), ("document", documents, self.document_vectors)):
            bad = (~torch.isfinite(vectors)).any(dim=-1).nonzero().flatten()
            if len(bad):  # every batch with that text would train on a nan loss
                raise ValueError(f"the teacher's vectors of {len(bad)} {what} texts are not finite (nan or inf), e.g. "
                                 f"{texts[int(bad[0])][:80]!r}: a teacher loaded in a dtype that overflows, or broken weights.")

    def rows(self, queries: Sequence[str], documents: Sequence[str]) -> Dict[str, torch.Tensor]:
        return {"teacher_query_embeddings": self.query_vectors[self._rows(self.query_row, queries, "query")],
                "teacher_document_embeddings": self.document_vectors[self._rows(self.document_row, documents, "document")]}

    @staticmethod
    def _rows(table: Dict[str, int], texts: Sequence[str], what: str) -> torch.Tensor:
        try:
            return torch.tensor([table[t] for t in texts], dtype=torch.long)
        except KeyError as missing:  # built from the same records, so this is a bug, never a user's mistake
            raise RuntimeError(f"the teacher has no vector of the training {what} {str(missing)[:80]}") from None
