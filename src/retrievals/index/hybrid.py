"""Hybrid retrieval: fuse several runs (BM25, sparse, dense) by reciprocal ranks or by weighted normalised scores."""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from ..data.io import rank
from ..inputs import check_top_k
from ..utils import UsageError, finite_number
from .base import Run

FUSIONS = ("rrf", "weighted")


def check_fusion(method: str, weights: Optional[Sequence[float]]) -> None:
    """The fusion settings a pipeline takes (``--fusion``, ``--fusion_weights``) for two runs: a named error."""
    if method not in FUSIONS:
        raise UsageError(f"--fusion must be one of {list(FUSIONS)}, got {method!r}.")
    weights = list(weights) if weights is not None else []  # a numpy array's truth value is ambiguous
    if weights and len(weights) != 2:
        raise UsageError(f"--fusion_weights takes two weights >= 0 (one per fused run), got {weights}.")
    if weights:
        check_weights(weights, "--fusion_weights")


def check_weights(weights: Sequence[float], name: str = "weights") -> None:
    """Finite numbers >= 0, at least one > 0: nan gives nan scores, all zeros a ranking by document id alone."""
    for i, weight in enumerate(weights):
        finite_number(f"{name}[{i}]", weight)
    if not any(w > 0 for w in weights):
        raise UsageError(f"{name} must have at least one weight above 0, got {list(weights)}.")


def fuse(method: str, runs: Sequence[Run], weights: Optional[Sequence[float]] = None, top_k: Optional[int] = None,
         k: int = 60) -> Run:
    """``rrf`` (:func:`reciprocal_rank_fusion`, constant ``k``) or ``weighted`` (:func:`weighted_score_fusion`)."""
    check_fusion(method, None)
    if method == "rrf":
        return reciprocal_rank_fusion(runs, k=k, weights=weights, top_k=top_k)
    return weighted_score_fusion(runs, weights=weights, top_k=top_k)


def reciprocal_rank_fusion(runs: Sequence[Run], k: int = 60, weights: Optional[Sequence[float]] = None,
                           top_k: Optional[int] = None) -> Run:
    """Fuse runs by ``sum_i w_i / (k + rank_i(d))`` (ranks from 1; ties in trec_eval's order, as written runs are).

    A document missing from a run gets nothing from it. Returns the fused run, best ``top_k`` per query.
    """
    finite_number("k (the rank constant, usually 60)", k)
    return _fuse(runs, weights, top_k, lambda scores: ((d, 1.0 / (k + i)) for i, d in enumerate(rank(scores), start=1)))


def weighted_score_fusion(runs: Sequence[Run], weights: Optional[Sequence[float]] = None,
                          top_k: Optional[int] = None) -> Run:
    """Fuse runs by ``sum_i w_i * s_i(d)``, each run's scores min-max normalised per query to [0, 1] first (scores
    of different models live on different scales: cosines, dot products, BM25).

    A document missing from a run gets 0 from it (the bottom of that run's scale); a query whose scores are all
    equal gives its documents 1. Ties are in trec_eval's order. Use it when one run is clearly stronger than
    the other (weights say by how much); reciprocal rank fusion needs no weights.

    >>> weighted_score_fusion([{"q": {"a": 3.0, "b": 1.0}}, {"q": {"b": 0.9, "c": 0.1}}], weights=[0.5, 0.5])
    {'q': {'b': 0.5, 'a': 0.5, 'c': 0.0}}
    """
    def scaled(scores: Mapping[str, float]) -> Iterable[Tuple[str, float]]:
        low, high = min(scores.values(), default=0.0), max(scores.values(), default=0.0)
        # in halves: high - low overflowed for finite scores of opposite signs near float's range (nan scores)
        return ((d, (s / 2 - low / 2) / (high / 2 - low / 2) if high > low else 1.0) for d, s in scores.items())

    return _fuse(runs, weights, top_k, scaled)


def _fuse(runs: Sequence[Run], weights: Optional[Sequence[float]], top_k: Optional[int],
          contribution: Callable[[Mapping[str, float]], Iterable[Tuple[str, float]]]) -> Run:
    """Sum each run's weighted ``contribution`` per query and document; best first, the best ``top_k`` when given."""
    top_k = check_top_k(top_k, allow_none=True)
    # a list of runs (a generator read once); one run, a string or a list of other things is refused
    runs = list(runs) if isinstance(runs, Iterable) and not isinstance(runs, (Mapping, str)) else None
    if runs is None or not all(isinstance(run, Mapping) for run in runs):
        raise TypeError("runs must be a list of runs ({query id: {document id: score}}), one per system fused")
    for i, run in enumerate(runs):
        for qid, scores in run.items():
            # string ids, as every run of ours: 1 and "1" were two queries, and int and str ids on a tie failed to sort
            if not isinstance(qid, str) or not isinstance(scores, Mapping) or not all(isinstance(d, str) for d in scores):
                raise UsageError(f"runs[{i}][{qid!r}] must map string document ids to scores, under a string query id "
                                 "(str(id)).")
            if not all(math.isfinite(v) for v in scores.values()):
                raise UsageError(f"runs[{i}][{qid!r}] must map document ids to finite scores.")
    weights = list(weights) if weights is not None else [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} runs")
    if weights:
        check_weights(weights)
    fused: Dict[str, Dict[str, float]] = {}
    for run, weight in zip(runs, weights):
        for qid, scores in run.items():
            target = fused.setdefault(qid, {})
            for doc_id, value in contribution(scores):
                target[doc_id] = target.get(doc_id, 0.0) + weight * value
    return {q: {d: s[d] for d in (rank(s) if top_k is None else rank(s)[:top_k])} for q, s in fused.items()}
