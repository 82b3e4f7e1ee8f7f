"""Hybrid retrieval: reciprocal-rank fusion of several runs (for example BM25 and dense)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from ..inputs import check_top_k
from .base import Run


def reciprocal_rank_fusion(runs: Sequence[Run], k: int = 60, weights: Optional[Sequence[float]] = None,
                           top_k: Optional[int] = None) -> Run:
    """Fuse runs by ``sum_i w_i / (k + rank_i(d))`` (ranks from 1; ties broken by document id).

    A document missing from a run gets nothing from it. Returns the fused run, best ``top_k`` per query.
    """
    top_k = check_top_k(top_k, allow_none=True)
    weights = list(weights) if weights is not None else [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} runs")
    fused: Dict[str, Dict[str, float]] = {}
    for run, weight in zip(runs, weights):
        for qid, scores in run.items():
            ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
            target = fused.setdefault(qid, {})
            for rank, (doc_id, _) in enumerate(ranked, start=1):
                target[doc_id] = target.get(doc_id, 0.0) + weight / (k + rank)
    if top_k is not None:
        fused = {q: dict(sorted(s.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]) for q, s in fused.items()}
    return fused
