"""Corpus retrieval evaluation of an embedder: encode, search exactly, score with the metrics."""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Iterable, Mapping

import numpy as np

from ..data.io import rank
from ..index.exact import ExactIndex
from ..index.hybrid import weighted_score_fusion
from ..inputs import check_flags, check_top_k
from ..utils import UsageError
from .metrics import check_k_values, evaluate_run


def retrieve(model: Any, corpus: Mapping[str, str], queries: Mapping[str, str], top_k: int = 100, batch_size: int = 64,
             show_progress_bar: bool = False) -> Dict[str, Dict[str, float]]:
    """A run (query id -> {doc id: score}) of the top ``top_k`` documents per query."""
    doc_ids = list(corpus)
    query_ids = list(queries)
    if hasattr(model, "encode_sparse"):  # a sparse embedder: exact dot products over an inverted index
        index = model.build_index([corpus[d] for d in doc_ids], ids=doc_ids, batch_size=batch_size)
        return model.search_run(index, {q: queries[q] for q in query_ids}, top_k, batch_size=batch_size)
    doc_emb = model.encode_corpus([corpus[d] for d in doc_ids], batch_size=batch_size, show_progress_bar=show_progress_bar)
    q_emb = model.encode_queries([queries[q] for q in query_ids], batch_size=batch_size, show_progress_bar=show_progress_bar)
    # the index's run: cut as trec_eval ranks it (equal scores by doc id), so a smaller top_k is a larger one's top
    return ExactIndex(doc_emb, doc_ids).search_run(query_ids, q_emb, top_k)


def evaluate_embedder(model: Any, corpus: Mapping[str, str], queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
                      k_values: Iterable[int] = (1, 3, 5, 10, 100), top_k: int = 100, batch_size: int = 64,
                      show_progress_bar: bool = False) -> Dict[str, float]:
    """Metrics of ``model`` retrieving the top ``top_k`` (at least max k) documents from ``corpus`` for
    ``queries`` judged by ``qrels``; MAP and MRR without a cut are computed over that depth."""
    k_values = check_k_values(k_values)
    depth = max((check_top_k(top_k), *k_values))
    run = retrieve(model, corpus, queries, top_k=depth, batch_size=batch_size, show_progress_bar=show_progress_bar)
    return evaluate_run(run, qrels, k_values)


def check_first_stage_weight(weight: float, flag: str = "first_stage_weight") -> float:
    """``weight`` as a float in [0, 1]; a bool or a string (``True`` passed as 1, ``"0.5"`` failed in a comparison)
    is a TypeError naming ``flag``."""
    if isinstance(weight, (bool, np.bool_)) or not isinstance(weight, numbers.Real):
        raise TypeError(f"{flag} must be a number in [0, 1], got {type(weight).__name__}.")
    if not 0.0 <= weight <= 1.0:  # nan too
        raise UsageError(f"{flag} must be in [0, 1], got {weight}.")
    return float(weight)


def rerank_run(ranker: Any, corpus: Mapping[str, str], queries: Mapping[str, str], run: Mapping[str, Mapping[str, float]],
               top_k: int = 20, batch_size: int = 32, show_progress_bar: bool = False,
               first_stage_weight: float = 0.0, keep_rest: bool = False) -> Dict[str, Dict[str, float]]:
    """Rescore each query's best ``top_k`` first-stage candidates with ``ranker.compute_score``.

    The candidates below ``top_k`` are dropped, so metrics measure the reranked list alone; with ``keep_rest`` they
    follow the reranked ones in their first-stage order (their scores become the lowest reranked score less 1, 2,
    ...: below every reranked one, as trec_eval must rank them), so the run keeps its depth and a cut metric such
    as recall@100 measures the list it names.
    ``first_stage_weight`` w in [0, 1]: each candidate's score becomes (1 - w) x reranker + w x first stage, both
    min-max normalised per query (:func:`retrievals.index.weighted_score_fusion`), so the reranker corrects the
    first stage rather than replacing it; 0 (default) keeps the reranker's raw scores.
    """
    first_stage_weight = check_first_stage_weight(first_stage_weight)
    top_k = check_top_k(top_k)
    check_flags(keep_rest=keep_rest)  # "no" is truthy: it kept the rest
    if not isinstance(run, Mapping):
        raise TypeError(f"run must be a mapping {{query id: {{doc id: score}}}}, got {type(run).__name__}.")
    pairs, owners = [], []
    candidates: Dict[str, Dict[str, float]] = {}
    for qid, scores in run.items():
        # a nan compares false both ways: the candidates kept would follow the run's dict order, not its scores
        bad = next((doc_id for doc_id, score in scores.items() if not math.isfinite(score)), None)
        if bad is not None:
            raise UsageError(f"run[{qid!r}][{bad!r}] is {scores[bad]}: first-stage scores must be finite numbers.")
        best = rank(scores)[:top_k]
        candidates[qid] = {doc_id: scores[doc_id] for doc_id in best}
        if best and qid not in queries:
            raise UsageError(f"run query {qid!r} is not in queries.")
        for doc_id in best:
            if doc_id not in corpus:
                raise UsageError(f"run[{qid!r}] candidate {doc_id!r} is not in the corpus.")
            pairs.append((queries[qid], corpus[doc_id]))
            owners.append((qid, doc_id))
    new_scores = ranker.compute_score(pairs, batch_size=batch_size, show_progress_bar=show_progress_bar) if pairs else []
    reranked: Dict[str, Dict[str, float]] = {qid: {} for qid in run}
    for (qid, doc_id), score in zip(owners, new_scores):
        reranked[qid][doc_id] = float(score)
    if first_stage_weight != 0.0:
        fused = weighted_score_fusion([reranked, candidates], weights=[1.0 - first_stage_weight, first_stage_weight])
        reranked = {qid: fused.get(qid, {}) for qid in run}
    if keep_rest:
        for qid, scores in run.items():
            lowest = min(reranked[qid].values(), default=0.0)
            rest = [doc_id for doc_id in rank(scores) if doc_id not in reranked[qid]]
            reranked[qid].update({doc_id: lowest - i for i, doc_id in enumerate(rest, start=1)})
    return reranked
