"""Exact (brute-force) inner-product search in torch, chunked over queries to bound memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..inputs import as_query_vectors, check_int, check_top_k
from .base import Index, as_matrix


def exact_search(
    query_embeddings: np.ndarray | torch.Tensor,
    document_embeddings: np.ndarray | torch.Tensor,
    top_k: int = 100,
    chunk_size: int = 1024,
) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``k`` documents by inner product for each query: (scores, indices), each [n_queries, k].

    With L2-normalised embeddings the inner product is the cosine similarity. Products are summed in float64
    (then rounded to float32): a float32 matrix product's last bits depend on how many queries share the call,
    so one query alone and the same query in a batch could get different scores, and near-ties other documents.

    >>> scores, indices = exact_search(np.eye(3)[:2], np.eye(3), top_k=1)
    >>> scores.tolist(), indices.tolist()
    ([[1.0], [1.0]], [[0], [1]])
    """
    d = as_matrix(document_embeddings)
    q = as_query_vectors(query_embeddings, d.shape[1])
    k = min(check_top_k(top_k), d.shape[0])
    if q.shape[0] == 0 or k == 0:
        return np.zeros((q.shape[0], k), dtype=np.float32), np.zeros((q.shape[0], k), dtype=np.int64)
    return _top_k(q, d, k, check_int("chunk_size", chunk_size, 1))


def _top_k(queries: np.ndarray, documents: np.ndarray, k: int, chunk_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`exact_search` on inputs already checked (``ExactIndex`` checked its vectors once, when built)."""
    q, d = torch.as_tensor(queries), torch.as_tensor(documents)
    scores, indices = [], []
    for start in range(0, q.shape[0], chunk_size):
        block = q[start : start + chunk_size].double()
        sims = torch.cat([block @ d[i : i + DOC_CHUNK].double().T for i in range(0, d.shape[0], DOC_CHUNK)], dim=1).float()
        s, i = _ties_by_position(sims, *torch.topk(sims, k, dim=1))
        scores.append(s)
        indices.append(i)
    return torch.cat(scores).numpy(), torch.cat(indices).numpy()


def _ties_by_position(sims: torch.Tensor, s: torch.Tensor, i: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Documents of equal score in document order, whatever ``k``: torch.topk's order (and, at the k-th score, its
    choice) of tied documents changes with k. Rows whose k-th score ties outside the top k are re-ranked in full."""
    k = s.shape[1]
    boundary = (sims == s[:, -1:]).sum(dim=1) > (s == s[:, -1:]).sum(dim=1)  # the k-th score recurs beyond the top k
    for row in boundary.nonzero().flatten().tolist():
        order = torch.sort(-sims[row], stable=True).indices[:k]  # stable: ties stay in document order
        s[row], i[row] = sims[row, order], order
    # within the top k: by score, then by position (a stable sort of position-sorted candidates)
    by_position = torch.sort(i, dim=1).indices
    i, s = torch.gather(i, 1, by_position), torch.gather(s, 1, by_position)
    by_score = torch.sort(-s, dim=1, stable=True).indices
    return torch.gather(s, 1, by_score), torch.gather(i, 1, by_score)


DOC_CHUNK = 65536  # documents converted to float64 at a time (memory: this many x dim x 8 bytes)


class ExactIndex(Index):
    """Document vectors kept in memory, searched exactly by inner product (cosine for normalised vectors)."""

    backend = "exact"

    def __init__(self, vectors: Any, ids: Sequence[str]) -> None:
        super().__init__(ids)
        self.vectors = as_matrix(vectors)
        if self.vectors.shape[0] != len(self.ids):
            raise ValueError(f"{self.vectors.shape[0]} vectors for {len(self.ids)} ids")

    def _queries(self, queries: Any) -> np.ndarray:
        return as_query_vectors(queries, self.vectors.shape[1])

    def _search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, List[List[str]]]:
        scores, idx = _top_k(queries, self.vectors, k, 1024)  # Index.search checked the queries and k
        return scores, [[self.ids[j] for j in row] for row in idx]

    def stored(self) -> int:
        return int(self.vectors.shape[0])

    def _save(self, folder: Path) -> Dict[str, Any]:
        np.save(folder / "vectors.npy", self.vectors)
        return {"dim": int(self.vectors.shape[1])}

    @classmethod
    def _load(cls, folder: Path, ids: List[str], settings: Dict[str, Any]) -> "ExactIndex":
        return cls(np.load(folder / "vectors.npy"), ids)
