"""Entry points of the seed's quick start: build a dense index, search it by query vectors."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from ..utils import UsageError
from .base import Index
from .exact import ExactIndex
from .faiss_index import FAISS_TYPES, FaissIndex
from .quantized import QuantizedIndex


# quantized faiss indexes: index_type -> (encoding, structure)
QUANTIZED_TYPES = {"int8": ("int8", "flat"), "binary": ("binary", "flat"), "binary_hnsw": ("binary", "hnsw")}


def build_dense_index(vectors: Any, ids: Sequence[str], index_type: str = "flat", **kwargs: Any) -> Index:
    """``exact`` (torch, no extra dependency), a faiss ``flat``/``ivf``/``hnsw`` index, or a quantized one
    (``int8``, ``binary``, ``binary_hnsw``; ``rescore_multiplier`` and ``rescore_with`` in ``kwargs``)."""
    if index_type == "exact":
        return ExactIndex(vectors, ids)
    if index_type in FAISS_TYPES:
        kwargs.pop("rescore_multiplier", None)
        kwargs.pop("rescore_with", None)
        return FaissIndex(vectors, ids, index_type, **kwargs)
    if index_type in QUANTIZED_TYPES:
        encoding, structure = QUANTIZED_TYPES[index_type]
        return QuantizedIndex(vectors, ids, encoding, structure, **kwargs)
    raise UsageError(f"Unknown dense index_type {index_type!r}; choose one of {['exact', *FAISS_TYPES, *QUANTIZED_TYPES]}.")


class AutoRetrieval:
    """``similarity_search(query_embed, index_path=... | index=..., top_k)`` -> (scores, row positions), best first."""

    def similarity_search(self, query_embed: Any, index_path: Optional[str] = None, index: Optional[Index] = None,
                          top_k: int = 10) -> Tuple[np.ndarray, np.ndarray]:
        if index is None:
            if index_path is None:
                raise ValueError("pass index_path (a saved index folder) or index")
            index = Index.load(index_path)
        scores, ids = index.search(query_embed, top_k)
        position = {doc_id: i for i, doc_id in enumerate(index.ids)}
        rows = np.asarray([[position.get(d, -1) for d in row] for row in ids], dtype=np.int64)
        return scores, rows.reshape(scores.shape)  # [n_queries, k] even for no queries
