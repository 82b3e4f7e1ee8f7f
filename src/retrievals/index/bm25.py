"""BM25 over raw texts with bm25s (optional dependency: ``pip install 'retrievals[bm25]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..inputs import as_texts
from ..utils import UsageError, finite_number, require
from .base import Index, top_k_by_position


BM25_METHODS = ("robertson", "lucene", "bm25l", "bm25+", "atire")  # bm25s' term-frequency variants


class BM25Index(Index):
    """Lexical BM25 (``k1``, ``b``, bm25s ``method``); texts are lowercased and split into words.
    ``stopwords``: a language code bm25s knows (such as ``"en"``) or None."""

    backend = "bm25"

    def __init__(self, texts: Optional[Sequence[str]], ids: Sequence[str], k1: float = 1.5, b: float = 0.75,
                 method: str = "lucene", stopwords: Optional[str] = None, _retriever: Any = None) -> None:
        super().__init__(ids)
        bm25s = require("bm25s", "bm25")
        quiet_bm25s()
        # checked here: nan k1 found nothing, a negative one reversed the ranking, and both were saved with the index
        k1, b = finite_number("k1", k1), finite_number("b", b)
        if b > 1:
            raise UsageError(f"b must be in [0, 1] (the share of length normalisation), got {b}.")
        if method not in BM25_METHODS:
            raise UsageError(f"method must be one of {', '.join(BM25_METHODS)} (bm25s' variants), got {method!r}.")
        if method == "bm25+" and k1 == 0:  # bm25s divides 0 by 0 there: every score nan, nothing found
            raise UsageError("method='bm25+' needs k1 > 0.")
        self.k1, self.b, self.method, self.stopwords = k1, b, method, stopwords
        if _retriever is not None:
            self.retriever = _retriever
            return
        texts = as_texts(texts if texts is not None else [], "texts", documents=True)[0]  # strings or BEIR dicts
        if len(texts) != len(self.ids):
            raise ValueError(f"{len(texts)} texts for {len(self.ids)} ids")
        tokens = bm25s.tokenize(texts, stopwords=stopwords, show_progress=False)
        if not tokens.vocab:  # bm25s fails on it with "max() arg is an empty sequence"
            raise UsageError(f"BM25Index: the {len(texts)} texts have no word to index (words of two or more letters or "
                             "digits, stopwords removed).")
        self.retriever = bm25s.BM25(k1=k1, b=b, method=method)
        self.retriever.index(tokens, show_progress=False)

    def _queries(self, queries: Any) -> List[str]:
        return as_texts(queries, "queries")[0]

    def _search(self, queries: List[str], k: int) -> Tuple[np.ndarray, List[List[str]]]:
        bm25s = require("bm25s", "bm25")
        from bm25s.tokenization import convert_tokenized_to_string_list

        tokens = bm25s.tokenize(queries, stopwords=self.stopwords, show_progress=False)
        scores, positions = np.zeros((len(queries), k), np.float32), np.zeros((len(queries), k), np.int64)
        for row, words in enumerate(convert_tokenized_to_string_list(tokens)):
            # bm25s' own top k (retrieve) chooses among equal scores by a partition that changes with k: the first
            # result of top_k=1 was not the first of top_k=10; ranked here as ExactIndex ranks, equal scores by position
            scores[row], positions[row] = top_k_by_position(self._scores(words), k)
        return scores, [[self.ids[j] if j >= 0 else None for j in row] for row in positions]

    def _scores(self, words: List[str]) -> np.ndarray:
        """Every document's BM25 score for a query's words, -inf for those holding none of them (not found, as
        Index.search states: bm25l and bm25+ add a constant per query word to every document's score, so a score
        alone does not tell), from the index's postings (the documents of each word)."""
        term_ids = self.retriever.get_tokens_ids(words)
        scores = np.full(len(self), -np.inf, dtype=np.float32)
        if term_ids:
            postings, starts = self.retriever.scores["indices"], self.retriever.scores["indptr"]
            found = np.concatenate([postings[starts[t] : starts[t + 1]] for t in set(term_ids)])
            scores[found] = np.asarray(self.retriever.get_scores_from_ids(term_ids), dtype=np.float32)[found]
        return scores

    def stored(self) -> int:
        return int(self.retriever.scores["num_docs"])

    def _save(self, folder: Path) -> Dict[str, Any]:
        self.retriever.save(str(folder / "bm25s"))
        return {"k1": self.k1, "b": self.b, "method": self.method, "stopwords": self.stopwords}

    @classmethod
    def _load(cls, folder: Path, ids: List[str], settings: Dict[str, Any]) -> "BM25Index":
        bm25s = require("bm25s", "bm25")
        retriever = bm25s.BM25.load(str(folder / "bm25s"))
        return cls(None, ids, settings.get("k1", 1.5), settings.get("b", 0.75), settings.get("method", "lucene"),
                   settings.get("stopwords"), _retriever=retriever)


def quiet_bm25s() -> None:
    """bm25s sets its own logger to DEBUG when imported, so every index build printed "DEBUG:bm25s: Building index
    from IDs objects" under any logging setup at WARNING; its level is raised to WARNING unless someone chose one
    since (``logging.getLogger("bm25s").setLevel(...)`` after the first import still wins)."""
    import logging

    bm25s_logger = logging.getLogger("bm25s")
    if bm25s_logger.level == logging.DEBUG and not getattr(bm25s_logger, "_retrievals_quieted", False):
        bm25s_logger.setLevel(logging.WARNING)
        bm25s_logger._retrievals_quieted = True  # once: a later DEBUG is the user's choice

