"""Reranking-style evaluation (as C-MTEB's T2Reranking): each query scored against its own candidates."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Sequence

import numpy as np

from ..data.readers import Record
from ..inputs import as_texts
from ..utils import UsageError
from .metrics import check_k_values, evaluate_run


def score_candidates(model: Any, query: str, documents: Sequence[str], batch_size: int = 32) -> List[float]:
    """Scores of ``documents`` for ``query``: ``compute_score`` for rerankers, dot products of
    ``encode_queries``/``encode_corpus`` embeddings for embedders (a string is one document)."""
    documents, _ = as_texts(documents, "documents", documents=True)
    if not documents:
        return []
    if hasattr(model, "compute_score"):
        return list(model.compute_score([(query, d) for d in documents], batch_size=batch_size))
    q = np.asarray(model.encode_queries([query], batch_size=batch_size))
    d = np.asarray(model.encode_corpus(list(documents), batch_size=batch_size))
    return (q @ d.T)[0].tolist()


def evaluate_reranking(model: Any, records: Iterable[Record], k_values: Iterable[int] = (10,), batch_size: int = 32) -> Dict[str, float]:
    """MAP, MRR@k and nDCG@k of ranking each record's positives + negatives (positives relevant).

    Works for embedders and rerankers alike; the query's whole candidate list is ranked, so MAP is
    over all candidates. Ties count against the positives: a model that scores a positive and a negative alike has
    not ranked the positive first. A record without negatives is refused: its positives would rank first whatever
    the model scores (1.0 for every model).
    """
    k_values = check_k_values(k_values)
    run: Dict[str, Dict[str, float]] = {}
    qrels: Dict[str, Dict[str, int]] = {}
    for i, record in enumerate(records):
        if not record.negatives:
            raise UsageError(f"{getattr(record, 'origin', None) or f'record {i}'}: no negatives to rank its positives "
                             "among; every model would score 1.0 on it.")
        docs = list(record.positives) + list(record.negatives)
        # ties are broken by doc id, descending (metrics.rank): every negative's id sorts above every positive's
        ids = [f"a{j}" for j in range(len(record.positives))] + [f"b{j}" for j in range(len(record.negatives))]
        scores = score_candidates(model, record.query, docs, batch_size)
        run[str(i)] = dict(zip(ids, map(float, scores)))
        qrels[str(i)] = {f"a{j}": 1 for j in range(len(record.positives))}
    metrics = evaluate_run(run, qrels, k_values)
    keep = ["map"] + [f"{m}@{k}" for k in k_values for m in ("mrr", "ndcg")]
    return {key: metrics[key] for key in keep}
