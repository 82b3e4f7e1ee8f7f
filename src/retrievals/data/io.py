"""Evaluation data in and out: BEIR folders, TREC run and qrels files, JSONL corpora and queries."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

import numpy as np

from ..files import atomic_write_text
from ..utils import logger
from .readers import DataError, check_unicode, iter_json_objects, iter_lines

Corpus = Dict[str, str]
Queries = Dict[str, str]
Qrels = Dict[str, Dict[str, int]]
Run = Dict[str, Dict[str, float]]


def rank(scores: Mapping[str, float]) -> List[str]:
    """Doc ids by score descending, ties by doc id descending (trec_eval's order; written runs use it too).

    >>> rank({"d1": 0.5, "d2": 0.9, "d3": 0.5})
    ['d2', 'd3', 'd1']
    """
    return [doc for doc, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def read_jsonl_texts(path: str | os.PathLike, id_key: str = "_id", text_key: str = "text", title_key: str = "title") -> Dict[str, str]:
    """``{id: text}`` from JSONL records (BEIR corpus/queries layout; ``title`` is prepended when present)."""
    out: Dict[str, str] = {}
    first: Dict[str, str] = {}  # id -> where it was first read
    for where, obj in iter_json_objects(path):
        key = (id_key if id_key in obj else ("id" if "id" in obj else None)) if isinstance(obj, dict) else None
        if key is None or not isinstance(obj.get(text_key), str):
            raise DataError(f"{where}: needs an '{id_key}' (or 'id') and a string '{text_key}'")
        raw_id = obj[key]
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or str(raw_id).strip() == "":
            raise DataError(f"{where}: field '{key}' must be a non-empty string or integer id, got {raw_id!r:.60}")
        title = obj.get(title_key)
        if title is not None and not isinstance(title, str):
            raise DataError(f"{where}: field '{title_key}' must be a string, got {type(title).__name__}")
        doc_id = str(raw_id)
        for name in (text_key, title_key):  # a "\ud800" escape failed in the tokenizer, naming no line
            if isinstance(obj.get(name), str):
                check_unicode(obj[name], where, f"'{name}'")
        if doc_id in first:  # the second would replace the first: one of them silently lost
            raise DataError(f"{where}: id {doc_id!r} was already used at {first[doc_id]}; ids must be unique")
        first[doc_id] = where
        title = (title or "").strip()
        out[doc_id] = f"{title} {obj[text_key]}".strip() if title else obj[text_key]
    return out


def _fields(line: str) -> List[str]:
    """A line's columns: split on tabs when it has one (BEIR TSV, whose ids may hold spaces: "doc 7" is one id),
    else on any whitespace (TREC files, whose ids cannot hold whitespace); an empty list for a blank line."""
    if not line.strip():
        return []
    return line.split("\t") if "\t" in line else line.split()


def check_trec_id(value: object, field: str, where: str) -> None:
    """TREC files separate columns by whitespace (trec_eval splits on any), so an id holding whitespace would be
    read back as other columns: refused when writing, naming the id, instead of a file that reads back wrong."""
    text = str(value)
    if text.split() != [text]:  # str.split() splits on what the readers split on: every Unicode whitespace
        raise DataError(f"{where}: {field} {text!r} is empty or contains whitespace, which a TREC file cannot hold "
                        "(its columns are separated by whitespace); use ids without whitespace, or save_beir "
                        "(tab-separated qrels)")


def read_qrels(path: str | os.PathLike) -> Qrels:
    """TREC qrels (``qid 0 docid rel``) or BEIR TSV (``query-id corpus-id score`` with a header; tab-separated,
    so its ids may contain spaces)."""
    qrels: Qrels = {}
    for line_no, line in iter_lines(path):  # UTF-8 (a BOM is fine, so the header is still recognised)
        parts = _fields(line)
        if not parts or (line_no == 1 and parts[0] in {"query-id", "qid", "query_id"}):
            continue
        if len(parts) == 4:
            qid, _, doc, rel = parts
        elif len(parts) == 3:
            qid, doc, rel = parts
        else:
            raise DataError(f"{path}:{line_no}: expected 'qid 0 docid relevance' or 'qid docid relevance'"
                            + (" (tab-separated, as the line has a tab)" if "\t" in line else ""))
        for field, value in (("query id", qid), ("document id", doc)):
            if not value.strip():  # "q1\t\t1": no id at all, never a document named ""
                raise DataError(f"{path}:{line_no}: the {field} column is empty")
        try:
            value = float(rel)
        except ValueError:
            raise DataError(f"{path}:{line_no}: relevance {rel!r} is not a number") from None
        if not (math.isfinite(value) and value.is_integer()):  # 0.5 would be read as 0: not relevant
            raise DataError(f"{path}:{line_no}: relevance {rel!r} must be a whole number (0, 1, 2, ...)")
        judged = qrels.setdefault(qid, {})
        if doc in judged and judged[doc] != int(value):
            raise DataError(f"{path}:{line_no}: query {qid!r}, document {doc!r} judged again, {int(value)} after "
                            f"{judged[doc]}; keep one judgment")
        judged[doc] = int(value)
    return qrels


def is_whole_number(value: object) -> bool:
    """An int (numpy's too), or a float equal to one (1.0: a pandas column); not a bool, a string, 0.5 or nan."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()


def check_relevance(value: object, where: str) -> int:
    """A judgment as the qrels readers take it, as an int: a whole number (``True``, 0.5 or "1" were written, then
    refused by the readers)."""
    if not is_whole_number(value):
        raise DataError(f"{where}: relevance {value!r} must be a whole number (0, 1, 2, ...)")
    return int(value)


def write_qrels(qrels: Mapping[str, Mapping[str, int]], path: str | os.PathLike) -> None:
    """TREC qrels (``qid 0 docid rel``); ids with whitespace are refused (see :func:`_check_trec_id`)."""
    for q, docs in qrels.items():
        check_trec_id(q, "query id", str(path))
        for d, r in docs.items():
            check_trec_id(d, "document id", f"{path}: query {q!r}")
            check_relevance(r, f"{path}: query {q!r}, document {d!r}")
    lines = [f"{q} 0 {d} {int(r)}\n" for q, docs in qrels.items() for d, r in docs.items()]
    atomic_write_text(Path(path), "".join(lines))


def read_trec_run(path: str | os.PathLike) -> Run:
    """A TREC run file: ``qid Q0 docid rank score tag`` (a tab-separated one may hold ids with spaces)."""
    run: Run = {}
    for line_no, line in iter_lines(path):
        parts = _fields(line)
        if not parts:
            continue
        if len(parts) != 6:
            raise DataError(f"{path}:{line_no}: expected 'qid Q0 docid rank score tag'")
        try:
            score = float(parts[4])
        except ValueError:
            raise DataError(f"{path}:{line_no}: score {parts[4]!r} is not a number") from None
        if not math.isfinite(score):  # refused later by the metrics, naming no line
            raise DataError(f"{path}:{line_no}: score {parts[4]!r} is not a finite number")
        scores = run.setdefault(parts[0], {})
        if parts[2] in scores:  # the later line replaced the earlier silently
            raise DataError(f"{path}:{line_no}: document {parts[2]!r} is listed twice for query {parts[0]!r}")
        scores[parts[2]] = score
    return run


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: str | os.PathLike, tag: str = "retrievals") -> None:
    """Rows in the order the metrics rank them (``metrics.rank``: ties by doc id descending, as trec_eval),
    so the file's rank column agrees with the scores reported for it. Scores are written exactly (Python's
    shortest round-trip repr), so the file ranks as the run in memory (trec_eval keeps scores as 32-bit floats:
    two that differ only beyond float32 precision tie there, in memory or read from a file alike). Ids (and
    ``tag``) with whitespace are refused (see :func:`_check_trec_id`)."""
    check_trec_id(tag, "tag", str(path))
    for qid, scores in run.items():
        check_trec_id(qid, "query id", str(path))
        for doc in scores:
            check_trec_id(doc, "document id", f"{path}: query {qid!r}")
    lines = []
    for qid, scores in run.items():
        # each score's shortest exact repr: rounded (to 6 decimals, say) two scores 3e-7 apart would read back tied,
        # and trec_eval (like read_trec_run + rank) would order them by doc id, not as the metrics did
        lines.extend(f"{qid} Q0 {doc} {i} {float(scores[doc])!r} {tag}\n" for i, doc in enumerate(rank(scores), start=1))
    atomic_write_text(Path(path), "".join(lines))


def beir_files(folder: str | os.PathLike, split: str = "test") -> Dict[str, Path]:
    """The files :func:`load_beir` reads, by role (``corpus``, ``queries``, ``qrels``): one list for the loader and
    for a pipeline that must not write over them."""
    folder = Path(folder)
    return {"corpus": folder / "corpus.jsonl", "queries": folder / "queries.jsonl", "qrels": folder / "qrels" / f"{split}.tsv"}


def load_beir(folder: str | os.PathLike, split: str = "test") -> Tuple[Corpus, Queries, Qrels]:
    """A BEIR folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``; queries limited to the judged ones."""
    files = beir_files(folder, split)
    for need in files.values():
        if not need.is_file():
            raise DataError(f"{need}: missing (a BEIR folder has corpus.jsonl, queries.jsonl, qrels/{split}.tsv)")
    qrels = read_qrels(files["qrels"])
    queries = {q: t for q, t in read_jsonl_texts(files["queries"]).items() if q in qrels}
    missing = [q for q in qrels if q not in queries]
    if missing:  # no text, so no run: each would count as a query scoring 0
        logger.warning("%s judges %d queries that %s lacks (%s); they are left out of the evaluation.",
                       files["qrels"], len(missing), files["queries"],
                       ", ".join(map(repr, missing[:5])) + (" ..." if len(missing) > 5 else ""))
        qrels = {q: docs for q, docs in qrels.items() if q in queries}
    return read_jsonl_texts(files["corpus"]), queries, qrels


def _beir_record(key: object, value: object, where: str) -> Dict[str, object]:
    """One corpus or queries line as :func:`read_jsonl_texts` reads it back: a text, or a ``{"title", "text"}`` dict."""
    if isinstance(key, bool) or not isinstance(key, (str, int)) or not str(key).strip():
        raise DataError(f"{where}: id {key!r} must be a non-empty string or integer")
    if isinstance(value, Mapping) and set(value) <= {"title", "text"} and "text" in value:
        fields = {name: value[name] for name in ("title", "text") if value.get(name) is not None}
    else:
        fields = {"text": value}
    for name, text in fields.items():
        if not isinstance(text, str):
            raise DataError(f"{where}: id {key!r}: the {name} must be a string (or the text a {{'title', 'text'}} "
                            f"dict of strings), got {type(text).__name__}")
        check_unicode(text, where, f"{name} of id {key!r}")
    return {"_id": key, **fields}


def save_beir(folder: str | os.PathLike, corpus: Mapping[str, str], queries: Mapping[str, str], qrels: Qrels, split: str = "test") -> None:
    """Write a BEIR folder that :func:`load_beir` reads back as given; everything is checked before anything is
    written (no half-saved folder)."""
    folder = Path(folder)
    qrels_file = folder / "qrels" / f"{split}.tsv"
    for q, docs in qrels.items():
        for value in map(str, (q, *docs)):
            # a tab or line break would split the TSV row: read back as other columns or rows (spaces are fine)
            if not value.strip() or any(c in value for c in "\t\n\r"):
                raise DataError(f"{qrels_file}: id {value!r} is empty or contains a tab or line "
                                "break, which a TSV qrels file cannot hold")
            check_unicode(value, str(qrels_file), "id")
        for d, r in docs.items():
            check_relevance(r, f"{qrels_file}: query {q!r}, document {d!r}")
    lines = {name: "".join(json.dumps(_beir_record(k, v, str(folder / f"{name}.jsonl")), ensure_ascii=False) + "\n"
                           for k, v in table.items())
             for name, table in (("corpus", corpus), ("queries", queries))}
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "corpus.jsonl", lines["corpus"])
    atomic_write_text(folder / "queries.jsonl", lines["queries"])
    rows = ["query-id\tcorpus-id\tscore\n"] + [f"{q}\t{d}\t{int(r)}\n" for q, docs in qrels.items() for d, r in docs.items()]
    atomic_write_text(folder / "qrels" / f"{split}.tsv", "".join(rows))


def dataset_hash(corpus: Mapping[str, str], queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]]) -> str:
    """sha256 over the sorted corpus, queries and qrels: two reports with the same hash used the same data (an index
    records its corpus by it). Each section is hashed as JSON, whose escaping keeps a tab or newline inside a text,
    and a record moved from one section to another, from ever reading as other records."""
    digest = hashlib.sha256()
    for name, part in (("corpus", corpus), ("queries", queries)):
        digest.update(json.dumps([name, sorted(part.items())], ensure_ascii=False).encode() + b"\n")
    judged = sorted((q, sorted(docs.items())) for q, docs in qrels.items())
    digest.update(json.dumps(["qrels", judged], ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


