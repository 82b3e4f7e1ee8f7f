"""Exact (brute-force) inner-product search in torch, chunked over queries to bound memory."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


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
