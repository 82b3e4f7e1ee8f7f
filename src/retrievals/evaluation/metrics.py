"""Ranking metrics with the standard (trec_eval) definitions.

A run maps query id -> {doc id: score}; qrels map query id -> {doc id: relevance}. Documents are
ranked by score, ties broken by doc id in descending order as trec_eval does. A document counts as
relevant when its relevance is > 0; nDCG uses graded relevance and takes its ideal ranking from
every judged document of the query, retrieved or not. A judged query without a relevant document
scores 0 on every metric, as trec_eval scores it (and pytrec_eval, BEIR and ranx with it).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Tuple

from ..data.io import is_whole_number, rank  # noqa: F401 (rank: the one ordering of a run, metrics and written runs agree)
from ..inputs import check_int
from ..utils import UsageError

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def ndcg_at_k(ranking: List[str], judged: Mapping[str, int], k: int) -> float:
    dcg = sum(judged.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranking[:k]) if judged.get(doc, 0) > 0)
    ideal = sorted((r for r in judged.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def average_precision(ranking: List[str], judged: Mapping[str, int], k: int | None = None) -> float:
    n_rel = sum(1 for r in judged.values() if r > 0)
    hits, total = 0, 0.0
    for i, doc in enumerate(ranking[:k] if k else ranking):
        if judged.get(doc, 0) > 0:
            hits += 1
            total += hits / (i + 1)
    return total / n_rel if n_rel else 0.0


def reciprocal_rank(ranking: List[str], judged: Mapping[str, int], k: int | None = None) -> float:
    for i, doc in enumerate(ranking[:k] if k else ranking):
        if judged.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranking: List[str], judged: Mapping[str, int], k: int) -> float:
    n_rel = sum(1 for r in judged.values() if r > 0)
    return sum(1 for doc in ranking[:k] if judged.get(doc, 0) > 0) / n_rel if n_rel else 0.0


def precision_at_k(ranking: List[str], judged: Mapping[str, int], k: int) -> float:
    """Relevant documents in the top k divided by k (trec_eval's P_k)."""
    return sum(1 for doc in ranking[:k] if judged.get(doc, 0) > 0) / k


def hit_at_k(ranking: List[str], judged: Mapping[str, int], k: int) -> float:
    """1 if any relevant document is in the top k, else 0 (so its mean is at most 1)."""
    return float(any(judged.get(doc, 0) > 0 for doc in ranking[:k]))


def check_k_values(k_values: Any) -> Tuple[int, ...]:
    """The cutoffs as ints >= 1 (a cutoff of 0 divides by zero, a negative one silently drops the last documents)."""
    if isinstance(k_values, (str, bytes)) or not isinstance(k_values, Iterable):
        raise TypeError(f"k_values must be a list of ints, got {type(k_values).__name__}")
    return tuple(check_int(f"k_values[{i}]", k, 1) for i, k in enumerate(k_values))


def check_run_scores(run: Run) -> None:
    """Every score finite: a nan compares false both ways, so a run holding one ranks by the order of its dict."""
    for qid, scores in run.items():
        for doc, score in scores.items():
            try:  # a string is a TypeError, an int past float's range an OverflowError: named like a nan
                finite = not isinstance(score, bool) and math.isfinite(score)
            except (TypeError, OverflowError):
                finite = False
            if not finite:
                raise UsageError(f"run[{qid!r}][{doc!r}] is {score!r}: scores must be finite numbers.")


def check_ids(run: Run, qrels: Qrels) -> None:
    """Query and document ids are strings on both sides: an int id never equals its string (every metric 0
    without a word), and ids of both types in one ranking cannot be ordered on a tie."""
    for name, table in (("run", run), ("qrels", qrels)):
        if not isinstance(table, Mapping):
            raise TypeError(f"{name} must be a mapping {{query id: {{doc id: value}}}}, got {type(table).__name__}.")
        for qid, docs in table.items():
            if not isinstance(qid, str):
                raise UsageError(f"{name}: query id {qid!r} is a {type(qid).__name__}; ids are strings (str(id)).")
            if not isinstance(docs, Mapping):
                raise UsageError(f"{name}[{qid!r}] is a {type(docs).__name__}; expected {{doc id: score}}.")
            bad = next((d for d in docs if not isinstance(d, str)), None)
            if bad is not None:
                raise UsageError(f"{name}[{qid!r}]: document id {bad!r} is a {type(bad).__name__}; ids are strings.")
            if name == "qrels":  # as read_qrels reads them and trec_eval takes them: whole numbers (0.5 and nan were
                # gains or silently not relevant, "1" a TypeError of a comparison)
                bad = next((d for d, r in docs.items() if not is_whole_number(r)), None)
                if bad is not None:
                    raise UsageError(f"qrels[{qid!r}][{bad!r}] is {docs[bad]!r}: relevance must be a whole number.")


def evaluate_run(run: Run, qrels: Qrels, k_values: Iterable[int] = (1, 3, 5, 10, 100)) -> Dict[str, float]:
    """Mean of every metric over the judged queries: ``map``, ``mrr``, ``ndcg@k``, ``mrr@k``,
    ``map@k``, ``recall@k``, ``precision@k`` and ``hit@k``. Queries missing from the run score 0 (trec_eval's
    ``-c``), and so do judged queries without a relevant document; qrels without any relevant document are refused.

    >>> run = {"q1": {"d1": 0.9, "d2": 0.8}, "q2": {"d3": 0.7, "d4": 0.6}}
    >>> qrels = {"q1": {"d1": 1}, "q2": {"d4": 1}}
    >>> metrics = evaluate_run(run, qrels, k_values=(1, 10))
    >>> metrics["mrr"], metrics["hit@1"], round(metrics["ndcg@10"], 4)
    (0.75, 0.5, 0.8155)
    """
    k_values = sorted(set(check_k_values(k_values)))
    check_ids(run, qrels)
    check_run_scores(run)
    if not any(r > 0 for judged in qrels.values() for r in judged.values()):
        raise ValueError("qrels hold no query with a relevant document.")
    totals: Dict[str, float] = {}
    n = 0
    for qid, judged in qrels.items():
        if not judged:  # no judgment at all: not a judged query (trec_eval has no line for it, pytrec_eval skips it)
            continue
        n += 1
        ranking = rank(run.get(qid, {}))
        values = {"map": average_precision(ranking, judged), "mrr": reciprocal_rank(ranking, judged)}
        for k in k_values:
            values[f"ndcg@{k}"] = ndcg_at_k(ranking, judged, k)
            values[f"map@{k}"] = average_precision(ranking, judged, k)
            values[f"mrr@{k}"] = reciprocal_rank(ranking, judged, k)
            values[f"recall@{k}"] = recall_at_k(ranking, judged, k)
            values[f"precision@{k}"] = precision_at_k(ranking, judged, k)
            values[f"hit@{k}"] = hit_at_k(ranking, judged, k)
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value
    return {key: value / n for key, value in totals.items()}
