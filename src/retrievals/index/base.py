"""The index interface: searchable documents with string ids, saved to and loaded from a folder."""

from __future__ import annotations

import json
import os
from collections import Counter
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

import numpy as np

from ..files import CorruptFileError, atomic_directory, folder_lock, prepare_folder, verify_files
from ..inputs import as_float32, check_encodable, check_finite, check_same_length, check_top_k
from ..utils import UsageError

Run = Dict[str, Dict[str, float]]
META = "index_meta.json"
INDEXES: Dict[str, Type["Index"]] = {}


class Index(ABC):
    """One subclass per backend (exact, faiss, bm25). ``search`` takes query vectors (dense
    backends) or query texts (BM25) and returns scores [Q, k] and the matching document ids.

    Backends implement ``_queries`` (check and convert the queries) and ``_search`` (at least one
    query, ``1 <= k <= len(index)``); ``search`` holds the contract they share.
    """

    backend: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.backend:
            INDEXES[cls.backend] = cls

    def __init__(self, ids: Sequence[str]) -> None:
        if isinstance(ids, (str, bytes)):  # would be split into one id per character
            raise UsageError(f"ids must be a list of document ids, got one {type(ids).__name__}: {ids[:40]!r}")
        self.ids = [check_encodable(str(i), f"ids[{n}]") for n, i in enumerate(ids)]  # ids.json must hold them
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("document ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: Any, top_k: int = 10) -> Tuple[np.ndarray, List[List[str]]]:
        """Scores [n_queries, k] (best first, ``k = min(top_k, len(index))``) and the ids of those documents.

        One query (a vector, or a string for BM25) counts as a list of one; no queries or ``top_k=0``
        give scores of shape [n_queries, k] with no search; a negative ``top_k`` is a ``ValueError``.
        A search may find fewer than k documents: an ``ivf`` index whose probed clusters hold fewer, a BM25 or
        sparse index where fewer share a term with the query. The slots left have id None and score -inf
        (:meth:`search_run` leaves them out).
        """
        k = min(check_top_k(top_k), len(self.ids))
        queries = self._queries(queries)
        if len(queries) == 0 or k == 0:
            return np.zeros((len(queries), k), dtype=np.float32), [[] for _ in range(len(queries))]
        return _finite_scores(*self._search(queries, k))

    @abstractmethod
    def _queries(self, queries: Any) -> Any:
        """The queries checked and converted for :meth:`_search` (a matrix or a list of texts)."""

    @abstractmethod
    def _search(self, queries: Any, k: int) -> Tuple[np.ndarray, List[List[str]]]:
        """:meth:`search` for at least one query and ``1 <= k <= len(self)``."""

    def _search_wider(self, queries: Any, width: int, k: int) -> Tuple[np.ndarray, List[List[str]]]:
        """:meth:`_search` of ``width`` >= ``k`` results, searched as for ``k`` (a backend whose candidates depend on
        how many are asked, a rescored quantized index, keeps those of ``k``: ``search_run`` = ``search``)."""
        return self._search(queries, width)

    def search_run(self, query_ids: Sequence[str], queries: Any, top_k: int = 100) -> Run:
        """A run: query id -> {document id: score} of the best ``top_k``, cut as trec_eval ranks a run.

        trec_eval orders equal scores by document id, descending (:func:`retrievals.data.io.rank`), whereas
        :meth:`search` keeps the first documents (by position) of those tied at the k-th score. Cut that way, the
        run at ``top_k=1`` of two documents with one text held the first while the run at ``top_k=2`` ranked the
        second above it: a smaller run was not the top of a larger one. So the documents tied at the k-th score
        are all fetched (the search is widened until the tie ends within it) and the best by id are kept."""
        if query_ids is None or isinstance(query_ids, (bytes, Mapping)) or not isinstance(query_ids, (str, Iterable)):
            raise TypeError(f"query_ids must be a list of query ids, got {type(query_ids).__name__}")
        query_ids = [query_ids] if isinstance(query_ids, str) else list(query_ids)
        k = min(check_top_k(top_k), len(self.ids))
        converted = self._queries(queries)
        check_same_length(query_ids, converted, "query_ids and queries")
        twice = [q for q, n in Counter(map(str, query_ids)).items() if n > 1]  # a run is keyed by query id
        if twice:
            raise UsageError(f"query_ids must be unique; {twice[0]!r} occurs more than once.")
        rows: List[List[Tuple[str, float]]] = [[] for _ in query_ids]
        todo, width = list(range(len(query_ids))) if k else [], min(k + 1, len(self.ids))
        while todo:
            scores, ids = _finite_scores(*self._search_wider(_take(converted, todo), width, k))
            still = []
            for row, row_scores, row_ids in zip(todo, scores, ids):
                found = [(d, float(s)) for d, s in zip(row_ids, row_scores) if d is not None]
                if width < len(self.ids) and len(found) == width and found[-1][1] == found[k - 1][1]:
                    still.append(row)  # the k-th score's tie may go on past what came back
                else:
                    rows[row] = sorted(found, key=lambda pair: (pair[1], pair[0]), reverse=True)[:k]
            todo, width = still, min(2 * width, len(self.ids))
        return {str(q): dict(row) for q, row in zip(query_ids, rows)}

    def stored(self) -> Optional[int]:
        """How many documents the backend's own structure holds (checked against the ids on load); None: unknown."""
        return None

    @abstractmethod
    def _save(self, folder: Path) -> Dict[str, Any]:
        """Write the backend's files into ``folder``; return settings to keep in the metadata."""

    @classmethod
    @abstractmethod
    def _load(cls, folder: Path, ids: List[str], settings: Dict[str, Any]) -> "Index":
        """Rebuild from what :meth:`_save` wrote."""

    source: Optional[Dict[str, Any]] = None  # what the index was built from (model weights, corpus), saved with it

    def save(self, path: str | os.PathLike) -> None:
        """Save the index with its document ids (atomically: a killed save leaves the old files). Files of the folder
        that no save of ours wrote are left alone; one this save would replace is refused."""
        with atomic_directory(path, "index") as scratch:
            settings = self._save(scratch)
            (scratch / "ids.json").write_text(json.dumps(self.ids, ensure_ascii=False), encoding="utf-8")
            meta = {"backend": self.backend, "size": len(self.ids), "settings": settings, "source": self.source}
            (scratch / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Index":
        """Load a saved index; the backend comes from ``index_meta.json``. ``Index.load`` takes any backend;
        ``FaissIndex.load`` (a backend's class) refuses a folder holding another backend's index."""
        folder = Path(path)
        with folder_lock(folder):  # a save into this folder elsewhere commits before or after this read, not during
            prepare_folder(folder)
            verify_files(folder)
            meta_file = folder / META
            if not meta_file.is_file():
                raise FileNotFoundError(f"{meta_file}: missing; not an index saved by retrievals.")
            meta = _read_meta(meta_file)
            backend = meta.get("backend")
            if backend not in INDEXES:
                raise ValueError(f"{meta_file}: unknown backend {backend!r}; known: {sorted(INDEXES)}.")
            if not issubclass(INDEXES[backend], cls):  # it returned that other index, which failed only at search
                saved = INDEXES[backend].__name__
                raise UsageError(f"{folder}: holds a saved {saved} (backend {backend!r}), not a {cls.__name__}; "
                                 f"load it with Index.load or {saved}.load.")
            ids = _read_ids(folder / "ids.json")
            index = INDEXES[backend]._load(folder, ids, meta.get("settings", {}))
        if len(index) != meta.get("size", len(index)) or index.stored() not in (None, len(index)):
            raise CorruptFileError(f"{folder}: ids.json lists {len(index)} documents, the index holds {index.stored()} "
                                   f"and {META} says {meta.get('size')}; the folder was altered after it was saved.")
        index.source = meta.get("source")
        return index


def _read_json(file: Path) -> Any:
    """``file``'s JSON. Damaged (a hand edit, a partial copy), it is a CorruptFileError naming the file: json's own
    error names none, and the CLI shows it as a traceback, not as the user's to fix."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _altered(file, f"not valid JSON ({exc})") from None


# the fields of index_meta.json that Index.load reads other than by comparing them, when present: their JSON types
_META_FIELDS = {"backend": ((str,), "a string"), "settings": ((dict,), "an object"),
                "source": ((dict, type(None)), "an object or null")}


def _read_meta(file: Path) -> Dict[str, Any]:
    """``index_meta.json``: an object, its fields of the types :meth:`Index.save` wrote."""
    meta = _read_json(file)
    if not isinstance(meta, dict):
        raise _altered(file, f"must hold a JSON object, got {type(meta).__name__}")
    for field, (types, expected) in _META_FIELDS.items():
        if field in meta and not isinstance(meta[field], types):
            raise _altered(file, f"{field!r} must be {expected}, got {type(meta[field]).__name__} {meta[field]!r}")
    return meta


def _read_ids(file: Path) -> List[str]:
    """``ids.json``: the list of document id strings :meth:`Index.save` wrote."""
    ids = _read_json(file)
    if not isinstance(ids, list):
        raise _altered(file, f"must hold a JSON list of document ids, got {type(ids).__name__}")
    wrong = next((n for n, i in enumerate(ids) if not isinstance(i, str)), None)
    if wrong is not None:
        raise _altered(file, f"document id [{wrong}] must be a string, got {type(ids[wrong]).__name__} {ids[wrong]!r}")
    return ids


def _altered(file: Path, problem: str) -> CorruptFileError:
    return CorruptFileError(f"{file}: {problem}; the folder was altered after it was saved.")


def ranked_search(search: Callable[[np.ndarray, int], Tuple[np.ndarray, np.ndarray]], queries: np.ndarray, k: int,
                  n: int) -> Tuple[np.ndarray, np.ndarray]:
    """``search(queries, width)`` (scores [Q, width], higher better; positions, -1 in slots no document reached) made
    to rank as :class:`ExactIndex` does: best first, equal scores by document position, for every k.

    faiss' heaps choose and order equal scores (duplicate documents, equal Hamming distances) their own way, which
    changes with k: the first result of ``top_k=1`` was not the first of ``top_k=10``. So a row whose k-th score ties
    with the last one returned is searched again twice as wide (only those rows), until the tie ends within what came
    back (or all ``n`` documents did); then each row is sorted by score, equal scores by position, and cut to k.
    """
    scores, positions = np.zeros((len(queries), k), np.float32), np.full((len(queries), k), -1, np.int64)
    # past k: shows whether the k-th score goes on; twice k, as most ties (equal Hamming distances) end within it
    todo, width = np.arange(len(queries)), min(2 * k + 1, n)
    while len(todo):
        s, p = search(queries[todo], width)
        s, p = np.where(p < 0, -np.inf, s).astype(np.float32), p.astype(np.int64)
        open_tie = (p[:, -1] >= 0) & (s[:, -1] == s[:, k - 1]) if width < n else np.zeros(len(todo), bool)
        done = ~open_tie
        order = np.lexsort((np.where(p[done] < 0, n, p[done]), -s[done]), axis=1)[:, :k]  # last key sorts first
        scores[todo[done]] = np.take_along_axis(s[done], order, 1)
        positions[todo[done]] = np.take_along_axis(p[done], order, 1)
        todo, width = todo[open_tie], min(2 * width, n)
    return scores, positions


def _finite_scores(scores: np.ndarray, ids: List[List[Optional[str]]]) -> Tuple[np.ndarray, List[List[Optional[str]]]]:
    """The search's results, when every found document's score is finite: float32 products of finite vectors or
    weights overflow (1e20 x 2e20), and two documents scored inf were ranked by position."""
    # searched in numpy first: only slots that are not finite (-inf where no document was found) are looked at
    if any(ids[r][c] is not None for r, c in np.argwhere(~np.isfinite(scores))):
        raise UsageError("a score overflowed float32 (inf or nan): the vectors or weights are too large (about 1e19 "
                         "or more); normalise them.")
    return scores, ids


def _take(queries: Any, rows: List[int]) -> Any:
    """The converted queries (a matrix or a list, see ``Index._queries``) of ``rows``."""
    return queries[np.asarray(rows)] if isinstance(queries, np.ndarray) else [queries[i] for i in rows]


def top_k_by_position(scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of one query's scores over every document (-inf: not found), ranked as :class:`ExactIndex`
    ranks: best first, equal scores by position; slots past the documents found get position -1 and -inf. Only the
    documents scoring at least the k-th score are sorted."""
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]
    candidates = np.flatnonzero(scores >= kth) if kth > -np.inf else np.flatnonzero(scores > -np.inf)
    best = candidates[np.lexsort((candidates, -scores[candidates]))][:k]
    padding = k - len(best)
    return (np.concatenate([scores[best], np.full(padding, -np.inf, np.float32)]).astype(np.float32),
            np.concatenate([best, np.full(padding, -1)]).astype(np.int64))


def as_matrix(vectors: Any) -> np.ndarray:
    """Document vectors as a finite float32 matrix [n, dim] (one 1-D vector is one document)."""
    if vectors is None or isinstance(vectors, (str, bytes, dict)):  # numpy reads None as one nan, a string as digits
        raise TypeError(f"document vectors must be a matrix [n, dim], got {type(vectors).__name__}")
    array = as_float32(vectors, "document vectors")
    if array.shape == (0,):  # an empty list was one document of 0 dimensions, so no query matched its width
        raise UsageError("document vectors: an empty list has no dimension; give no documents as an array [0, dim]")
    array = array[None, :] if array.ndim == 1 else array
    if array.ndim != 2:
        raise UsageError(f"document vectors must be a matrix [n, dim], got an array of shape {tuple(array.shape)}")
    return check_finite(array, "vectors")
