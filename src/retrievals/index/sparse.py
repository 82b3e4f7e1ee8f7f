"""Inverted index over sparse vectors (``{term id: weight}``, as :class:`retrievals.models.sparse.SparseEmbedder`
gives): exact sparse dot products, term by term."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..utils import UsageError
from .base import Index, top_k_by_position


def _term_id(key: Any) -> int:
    """A term id: an int, or its decimal string (JSON keys); ``"01"`` or ``1.7`` would silently merge terms. Within
    0 to 2**63 - 1: the postings store int64 (a larger one was numpy's OverflowError, naming nothing), and a negative
    one, written to JSON as "-1", would not read back."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        key = int(key)
    elif isinstance(key, str) and key.isdigit() and str(int(key)) == key:
        key = int(key)
    else:
        raise ValueError(key)
    if not 0 <= key < 2 ** 63:
        raise ValueError(key)
    return key


def _weight(value: Any) -> float:
    """A weight: a real number ("2" or True would pass float() as 2.0 and 1.0, a string or bool of the caller's)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(value)
    return float(value)


def _as_sparse(vector: Any, where: str) -> Dict[int, float]:
    if isinstance(vector, Mapping):
        try:
            out = {_term_id(k): _weight(v) for k, v in vector.items()}
        except (TypeError, ValueError):
            raise TypeError(f"{where} must map integer term ids (ints or their decimal strings) to numbers, got "
                            f"{dict(list(vector.items())[:3])!r}") from None
        if len(out) != len(vector):
            raise UsageError(f"{where}: two keys name the same term id")
        # checked as the float32 the postings store: 1e39 passed as finite, then was stored (and scored) as inf
        with np.errstate(over="ignore"):  # the overflow is the error raised below, not a warning besides
            stored = np.array(list(out.values()), dtype=np.float32)
        if not np.isfinite(stored).all():
            raise UsageError(f"{where} has a nan or inf weight (or one past float32's range); weights must be finite.")
        return {k: v for k, v in out.items() if v != 0.0}
    if hasattr(vector, "detach"):  # a torch tensor; sparse layouts (sentence-transformers' SparseEncoder) made dense
        vector = vector.detach().cpu().float()
        vector = vector.to_dense() if str(vector.layout) != "torch.strided" else vector
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1:
        raise TypeError(f"{where} must be a {{term: weight}} dict or a 1-d vector, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise UsageError(f"{where} has a nan or inf weight; weights must be finite.")
    nonzero = np.flatnonzero(array)
    return dict(zip(nonzero.tolist(), array[nonzero].tolist()))


class SparseIndex(Index):
    """Postings per term (document positions and weights); a query's score for a document is the sum over shared
    terms of query weight x document weight, computed exactly. ``vectors``: one ``{term id: weight}`` dict (or
    dense vector) per document."""

    backend = "sparse"

    def __init__(self, vectors: Sequence[Any], ids: Sequence[str], _postings: Any = None) -> None:
        super().__init__(ids)
        if _postings is not None:
            self.terms, self.offsets, self.docs, self.weights = _postings
            return
        if vectors is None or isinstance(vectors, (str, bytes, Mapping)):  # one dict would be read as its keys
            raise TypeError("vectors must be a list of {term id: weight} dicts or vectors, got "
                            f"{type(vectors).__name__}")
        if not hasattr(vectors, "__len__"):  # a generator: read once
            vectors = list(vectors)
        if len(vectors) != len(self.ids):
            raise UsageError(f"{len(vectors)} vectors for {len(self.ids)} ids")
        rows = [_as_sparse(v, f"vectors[{i}]") for i, v in enumerate(vectors)]
        pairs = sorted((term, doc, weight) for doc, row in enumerate(rows) for term, weight in row.items())
        terms = np.array([p[0] for p in pairs], dtype=np.int64)
        self.terms, starts = np.unique(terms, return_index=True) if len(terms) else (np.zeros(0, np.int64), np.zeros(0, np.int64))
        self.offsets = np.append(starts, len(terms)).astype(np.int64)
        self.docs = np.array([p[1] for p in pairs], dtype=np.int32)  # positions: 4 bytes per posting
        self.weights = np.array([p[2] for p in pairs], dtype=np.float32)

    @property
    def postings(self) -> int:
        """Stored (term, document) entries: the index's size."""
        return int(len(self.docs))

    def _queries(self, queries: Any) -> List[Dict[int, float]]:
        if queries is None or isinstance(queries, (str, bytes)):  # were "not iterable" or "could not convert 'a'"
            raise TypeError(f"queries must be {{term id: weight}} dicts or vectors, got {type(queries).__name__}")
        if isinstance(queries, Mapping) or getattr(queries, "ndim", 2) == 1:
            queries = [queries]
        return [_as_sparse(q, f"queries[{i}]") for i, q in enumerate(queries)]

    def _search(self, queries: List[Dict[int, float]], k: int) -> Tuple[np.ndarray, List[List[str]]]:
        out_scores = np.zeros((len(queries), k), dtype=np.float32)
        out_ids: List[List[str]] = []
        for row, query in enumerate(queries):
            scores = np.zeros(len(self.ids), dtype=np.float32)
            hit = np.zeros(len(self.ids), dtype=bool)  # documents sharing a term with the query: the only ones found
            for term, weight in query.items():
                at = np.searchsorted(self.terms, term)
                if at < len(self.terms) and self.terms[at] == term:
                    span = slice(self.offsets[at], self.offsets[at + 1])
                    np.add.at(scores, self.docs[span], weight * self.weights[span])
                    hit[self.docs[span]] = True
            scores[~hit] = -np.inf
            out_scores[row], best = top_k_by_position(scores, k)  # only documents at or above the k-th are sorted
            out_ids.append([self.ids[j] if j >= 0 else None for j in best])
        return out_scores, out_ids

    def stored(self) -> Optional[int]:
        """Documents without a nonzero weight leave no trace in the postings: only an upper bound is checked."""
        return None if not len(self.docs) or int(self.docs.max()) < len(self.ids) else int(self.docs.max()) + 1

    def _save(self, folder: Path) -> Dict[str, Any]:
        np.savez(folder / "postings.npz", terms=self.terms, offsets=self.offsets, docs=self.docs, weights=self.weights)
        return {"postings": self.postings}

    @classmethod
    def _load(cls, folder: Path, ids: List[str], settings: Dict[str, Any]) -> "SparseIndex":
        data = np.load(folder / "postings.npz")
        return cls([], ids, _postings=(data["terms"], data["offsets"], data["docs"], data["weights"]))
