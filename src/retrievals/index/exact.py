"""Exact (brute-force) inner-product search in torch, chunked over queries to bound memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..inputs import as_query_vectors
from .base import Index, as_matrix


def exact_search(
    query_embeddings: np.ndarray | torch.Tensor,
    document_embeddings: np.ndarray | torch.Tensor,
    top_k: int = 100,
    chunk_size: int = 1024,
) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``k`` documents by inner product for each query: (scores, indices), each [n_queries, k].

    With L2-normalised embeddings the inner product is the cosine similarity.
    """
    q = torch.as_tensor(query_embeddings, dtype=torch.float32)
    d = torch.as_tensor(document_embeddings, dtype=torch.float32)
    k = min(top_k, d.shape[0])
    scores, indices = [], []
    for start in range(0, q.shape[0], chunk_size):
        s, i = torch.topk(q[start : start + chunk_size] @ d.T, k, dim=1)
        scores.append(s)
        indices.append(i)
    return torch.cat(scores).numpy(), torch.cat(indices).numpy()


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
        scores, idx = exact_search(queries, self.vectors, k)
        return scores, [[self.ids[j] for j in row] for row in idx]

    def _save(self, folder: Path) -> Dict[str, Any]:
        np.save(folder / "vectors.npy", self.vectors)
        return {"dim": int(self.vectors.shape[1])}

    @classmethod
    def _load(cls, folder: Path, ids: List[str], settings: Dict[str, Any]) -> "ExactIndex":
        return cls(np.load(folder / "vectors.npy"), ids)
