"""Exact (brute-force) inner-product search in torch, chunked over queries and documents to bound memory."""

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
        s, i = _block_top_k(q[start : start + chunk_size].double(), d, k)
        scores.append(s)
        indices.append(i)
    return torch.cat(scores).numpy(), torch.cat(indices).numpy()


def _block_top_k(block: torch.Tensor, d: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` of one query block, best first: scores ``max(DOC_CHUNK, k)`` documents at a time and merges each
    chunk's top k into a running top k, so memory grows with the queries times that step, not with the corpus (at
    least k per step: smaller steps would merge the k kept documents more often than there are new ones)."""
    step = max(DOC_CHUNK, k)
    scores = torch.empty((block.shape[0], 0), dtype=torch.float32)
    positions = torch.empty((block.shape[0], 0), dtype=torch.int64)
    for start in range(0, d.shape[0], step):
        sims = _scores(block, d[start : start + step])
        n = _entering(sims, scores, k)
        if n:
            s, p = _best(sims, torch.arange(start, start + sims.shape[1]).expand_as(sims), n)
            scores, positions = _best(torch.cat([scores, s], dim=1), torch.cat([positions, p], dim=1), k)
    order = torch.sort(_ranking_keys(scores, positions), dim=1, descending=True).indices
    return torch.gather(scores, 1, order), torch.gather(positions, 1, order)


def _scores(block: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
    """Inner products of float64 queries with some documents, summed in float64 and rounded to float32."""
    return (block @ documents.double().T).float()


def _entering(sims: torch.Tensor, kept: torch.Tensor, k: int) -> int:
    """At most how many of a chunk's documents enter a row's top k: any while fewer than k are kept, else those scoring
    above the k-th kept one (an equal score ranks below it: chunks come in document order). Usually few: a small top k
    of the chunk is then enough, and cheaper to take than k."""
    if kept.shape[1] < k:
        return k
    return min(k, int((sims > kept.min(dim=1, keepdim=True).values).sum(dim=1).max()))


def _best(scores: torch.Tensor, positions: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best documents of each row (unordered) as the ranking chooses them: by score, equal scores by
    position. torch.topk alone picks among documents tied at the k-th score in an order that changes with k and the
    other candidates; the rows where the (k+1)-th score equals the k-th are chosen again, by ranking keys."""
    if scores.shape[1] <= k:
        return scores, positions
    top, columns = torch.topk(scores, k + 1, dim=1)  # sorted: the k-th and (k+1)-th scores are the last two
    s, p = top[:, :k], torch.gather(positions, 1, columns[:, :k])
    tied = (top[:, k] == top[:, k - 1]).nonzero().flatten()
    if len(tied):
        keys = _ranking_keys(scores[tied], positions[tied])
        kept = torch.topk(keys, k, dim=1, sorted=False).indices
        s[tied], p[tied] = torch.gather(scores[tied], 1, kept), torch.gather(positions[tied], 1, kept)
    return s, p


_POSITION_MASK = 0xFFFFFFFF  # the low 32 bits of a ranking key: up to 2**32 documents


def _ranking_keys(scores: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One int64 per score that orders as the ranking does: higher score first, equal scores by document position.
    Equal scores are thus never ordered by torch.topk's choice, so the merged top k of the chunks is the top k of
    one full sort, for every k and chunk size."""
    bits = (scores + 0.0).view(torch.int32).long()  # + 0.0: -0.0 becomes 0.0, which it equals (as == says)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # a negative float's other bits count the wrong way
    return ordered * (_POSITION_MASK + 1) + (_POSITION_MASK - positions)  # fits in int64: |ordered| <= 2**31


DOC_CHUNK = 4096  # documents scored at a time (memory: about 20 bytes x this many x the queries of a block)


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
