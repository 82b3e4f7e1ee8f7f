"""The AIA-BDE v2.0 Portuguese FAQ retrieval data, split by FAQ for training and held-out testing.

File format: one ``TAG:text`` per line. ``P`` starts an FAQ (its question), ``R`` is its answer,
``VIN``/``VUC`` are human paraphrases of the question (the queries). A document is ``P + " " + R``.
``VG1``/``VG2`` are machine back-translations of the question (Brazilian Portuguese), one of each per FAQ: extra
training queries where a recipe wants them (``query_tags``), never test queries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..utils import UsageError
from .readers import DataError, iter_lines

QUERY_TAGS = ("VIN", "VUC")
BACK_TRANSLATION_TAGS = ("VG1", "VG2")


@dataclass
class FAQ:
    faq_id: str
    question: str
    answer: str = ""
    queries: List[str] = field(default_factory=list)

    @property
    def document(self) -> str:
        return f"{self.question} {self.answer}".strip()


def parse_aia_bde(path: str | Path, query_tags: Tuple[str, ...] = QUERY_TAGS) -> List[FAQ]:
    """Every FAQ of the file, in order, with its queries: the lines tagged ``query_tags`` (by default the human
    paraphrases, as the file has them; a machine one already among the FAQ's queries is left out). The FAQs, and so
    :func:`split_by_faq`'s split, do not depend on the tags."""
    unknown = set(query_tags) - set(QUERY_TAGS) - set(BACK_TRANSLATION_TAGS) - {"VMT"}
    if unknown:
        raise ValueError(f"unknown AIA-BDE query tags {sorted(unknown)}; known: VIN, VUC, VG1, VG2, VMT.")
    faqs: List[FAQ] = []
    current: Optional[FAQ] = None
    for lineno, line in iter_lines(path):  # UTF-8 named by file:line when it is not, a BOM dropped
        tag, sep, text = line.partition(":")
        if not sep:
            continue
        text = text.strip()
        if tag == "P":
            current = FAQ(faq_id=f"faq{len(faqs)}", question=text)
            faqs.append(current)
        elif current is None:
            continue
        elif tag == "R":
            current.answer = text
        elif tag in query_tags and text and (tag in QUERY_TAGS or text not in current.queries):
            current.queries.append(text)  # a machine query equal to one already there is left out
    if not faqs:
        raise DataError(f"{path}: no FAQ ('P:' lines) found.")
    return faqs


@dataclass
class RetrievalSplit:
    """Corpus (every FAQ), and train/test queries whose FAQs do not overlap."""

    corpus: Dict[str, str]
    train_queries: Dict[str, str]
    train_qrels: Dict[str, Dict[str, int]]
    test_queries: Dict[str, str]
    test_qrels: Dict[str, Dict[str, int]]
    train_faq_ids: List[str]


def split_by_faq(faqs: List[FAQ], test_fraction: float = 0.3, seed: int = 0) -> RetrievalSplit:
    """Hold out ``test_fraction`` of the FAQs (and all their queries) for testing: a fraction in (0, 1) leaving at
    least one FAQ on each side."""
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1) or isinstance(test_fraction, bool):
        raise UsageError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}.")
    held_out = round(len(faqs) * test_fraction)
    if not 0 < held_out < len(faqs):
        raise UsageError(f"test_fraction {test_fraction} of {len(faqs)} FAQs holds out {held_out}: each side needs at "
                         "least one FAQ.")
    ids = [f.faq_id for f in faqs]
    rng = random.Random(seed)
    rng.shuffle(ids)
    test_ids = set(ids[:held_out])
    split = RetrievalSplit({f.faq_id: f.document for f in faqs}, {}, {}, {}, {}, [])
    for faq in faqs:
        is_test = faq.faq_id in test_ids
        if not is_test:
            split.train_faq_ids.append(faq.faq_id)
        queries, qrels = (split.test_queries, split.test_qrels) if is_test else (split.train_queries, split.train_qrels)
        for i, query in enumerate(faq.queries):
            qid = f"{faq.faq_id}-q{i}"
            queries[qid] = query
            qrels[qid] = {faq.faq_id: 1}
    return split


def twin_faqs(split: RetrievalSplit) -> Dict[str, int]:
    """FAQs whose document repeats another's word for word (AIA-BDE v2.0 has five such pairs). The split is by FAQ,
    so a pair can straddle it: a held-out query then asks for a document whose twin is a training positive, and
    a pair held out whole has qrels crediting one of two identical documents. Counted, not changed: every published
    figure is measured on this split."""
    groups: Dict[str, List[str]] = {}
    for faq_id, document in split.corpus.items():
        groups.setdefault(document, []).append(faq_id)
    twins = [ids for ids in groups.values() if len(ids) > 1]
    train = set(split.train_faq_ids)
    straddling = {i for ids in twins if train & set(ids) and set(ids) - train for i in ids if i not in train}
    held_out = {i for ids in twins if not train & set(ids) for i in ids}
    relevant = {qid: next(iter(rels)) for qid, rels in split.test_qrels.items()}
    return {"twin_groups": len(twins),
            "straddling_groups": sum(1 for ids in twins if train & set(ids) and set(ids) - train),
            "held_out_queries_with_a_training_twin": sum(faq in straddling for faq in relevant.values()),
            "held_out_queries_with_a_held_out_twin": sum(faq in held_out for faq in relevant.values())}
