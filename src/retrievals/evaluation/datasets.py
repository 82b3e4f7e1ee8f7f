"""Evaluation datasets by name or folder: ``aia-bde`` (held-out FAQs), a Vaswani TREC folder, or a BEIR folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional

from ..data.readers import DataError
from ..data.io import beir_files, dataset_hash, load_beir
from ..utils import logger


@dataclass
class EvalDataset:
    name: str
    corpus: Dict[str, str]
    queries: Dict[str, str]
    qrels: Dict[str, Dict[str, int]]

    @property
    def hash(self) -> str:
        return dataset_hash(self.corpus, self.queries, self.qrels)


def load_eval_dataset(name_or_path: str, split: str = "test") -> EvalDataset:
    """``aia-bde``: the held-out 30% of FAQs (split by FAQ, seed 0), retrieval from all 855 FAQs;
    a folder with ``doc-text.trec``: Vaswani; a folder with ``corpus.jsonl``: BEIR (``qrels/<split>.tsv``)."""
    if name_or_path == "aia-bde":
        from ..assets import fetch
        from ..data.aia_bde import parse_aia_bde, split_by_faq

        data = split_by_faq(parse_aia_bde(fetch("aia-bde")), 0.3, 0)
        return EvalDataset("aia-bde (held-out FAQs)", data.corpus, data.test_queries, data.test_qrels)
    folder, layout = Path(name_or_path), _layout(name_or_path)
    if layout == "vaswani":
        from ..data.vaswani import load_vaswani

        return EvalDataset(f"vaswani ({folder.name})", *load_vaswani(folder))
    if layout == "beir":
        return EvalDataset(f"beir ({folder.name}, {split})", *load_beir(folder, split))
    raise DataError(f"{name_or_path}: not 'aia-bde', a Vaswani folder (doc-text.trec) or a BEIR folder (corpus.jsonl)")


def _layout(name_or_path: str) -> Optional[str]:
    """Which loader a folder goes to (one rule for the loader and for the list of its files)."""
    folder = Path(name_or_path)
    if (folder / "doc-text.trec").is_file():
        return "vaswani"
    return "beir" if (folder / "corpus.jsonl").is_file() else None


def dataset_files(name_or_path: str, split: str = "test") -> Dict[str, Path]:
    """The user's files ``load_eval_dataset(name_or_path, split)`` reads, by role (``corpus``, ``queries``,
    ``qrels``), so a pipeline can refuse an output path that is one of them; none for ``aia-bde`` (a fetched asset
    in the cache) or a folder the loader refuses."""
    layout = None if name_or_path == "aia-bde" else _layout(name_or_path)
    if layout == "vaswani":
        from ..data.vaswani import vaswani_files

        return vaswani_files(name_or_path)
    return beir_files(name_or_path, split) if layout == "beir" else {}


def check_qrels_cover(qrels: Dict[str, Dict[str, int]], queries: Mapping[str, str], corpus: Mapping[str, str],
                      where: str) -> None:
    """Judgments that name no query or document of this run measure nothing: none at all is an error (the metrics
    would print 0 as if retrieval had failed), some are a warning with their count."""
    judged = {q for q, docs in qrels.items() if any(r > 0 for r in docs.values())}
    if not judged:
        raise DataError(f"{where}: no query has a relevant document (every relevance is 0).")
    missing = judged - set(queries)
    if missing == judged:
        raise DataError(f"{where}: none of its {len(judged)} judged query ids is a query id of this run (e.g. "
                        f"{sorted(judged)[0]!r} vs {sorted(queries)[0] if queries else None!r}); ids must match exactly.")
    relevant = {d for q, docs in qrels.items() if q in queries for d, r in docs.items() if r > 0}
    unknown = relevant - set(corpus)
    if unknown == relevant:
        raise DataError(f"{where}: none of its {len(relevant)} relevant document ids is a document id of the corpus "
                        f"(e.g. {sorted(relevant)[0]!r} vs {sorted(corpus)[0] if corpus else None!r}); ids must match "
                        "exactly.")
    if missing or unknown:
        logger.warning("%s: %d judged queries are not among the queries (left out of the metrics) and %d relevant "
                       "documents not in the corpus.", where, len(missing), len(unknown))
