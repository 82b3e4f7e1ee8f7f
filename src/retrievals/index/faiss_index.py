"""faiss backends: flat inner product, IVF and HNSW (optional dependency: ``pip install 'retrievals[faiss]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils import UsageError, require
from ..inputs import as_query_vectors, check_int
from .base import Index, as_matrix, ranked_search

FAISS_TYPES = ("flat", "ivf", "hnsw")


class _SearchSetting:
    """A faiss search setting (``nprobe``, ``ef_search``): checked, and applied to the index as soon as it is set (a
    later change applies to the next search and is saved, as faiss' own attribute would)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        return self if obj is None else obj.__dict__[self.name]

    def __set__(self, obj: Any, value: int) -> None:
        obj.__dict__[self.name] = check_int(self.name, value, 1)
        if "index" in obj.__dict__:  # while building, the index comes after the settings
            obj._apply_search_settings()


class FaissIndex(Index):
    """Inner-product faiss index (cosine for normalised vectors), saved with its document ids.

    ``index_type``: ``flat`` (exact), ``ivf`` (``nlist`` clusters, ``nprobe`` searched; default
    nlist ~ 4 sqrt(n)) or ``hnsw`` (``m`` links, ``ef_search``).
    """

    backend = "faiss"
    nprobe = _SearchSetting()
    ef_search = _SearchSetting()

    def __init__(self, vectors: Any, ids: Sequence[str], index_type: str = "flat", nlist: Optional[int] = None,
                 nprobe: int = 16, m: int = 32, ef_search: int = 128, _index: Any = None) -> None:
        super().__init__(ids)
        faiss = require("faiss", "faiss")
        if index_type not in FAISS_TYPES:
            raise ValueError(f"Unknown faiss index_type {index_type!r}; choose one of {list(FAISS_TYPES)}.")
        # bad values crash faiss itself (m=0 aborts the process, m<0 exhausts memory) or drop results (ef_search=0)
        if nlist is not None:
            check_int("nlist", nlist, 1)
        self.index_type, self.m, self.nprobe, self.ef_search = index_type, check_int("m", m, 2), nprobe, ef_search
        if _index is not None:
            self.index = _index
        else:
            x = as_matrix(vectors)
            if x.shape[0] != len(self.ids):
                raise ValueError(f"{x.shape[0]} vectors for {len(self.ids)} ids")
            dim = x.shape[1]
            if index_type == "flat":
                self.index = faiss.IndexFlatIP(dim)
            elif index_type == "ivf":
                if not len(x):  # faiss' own failure (a C++ assertion) names nothing
                    raise UsageError("FaissIndex: an ivf index clusters the vectors it indexes, and none were given.")
                if nlist is not None and nlist > len(x):  # faiss' own failure ("nx >= k") names nothing
                    raise UsageError(f"FaissIndex: nlist={nlist} clusters need at least as many vectors; got {len(x)}.")
                nlist = nlist or max(1, min(int(4 * np.sqrt(len(x))), len(x) // 39 or 1))
                self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
                self.index.train(x)
            else:
                self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
            self.index.add(x)
        self.nlist = getattr(self.index, "nlist", None)
        self._apply_search_settings()

    def _apply_search_settings(self) -> None:
        if self.index_type == "ivf":
            self.index.nprobe = self.nprobe
        elif self.index_type == "hnsw":
            self.index.hnsw.efSearch = self.ef_search

    def _queries(self, queries: Any) -> np.ndarray:
        return as_query_vectors(queries, self.index.d)

    def _search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, List[List[str]]]:
        # slots no document reached (faiss: -3.4e38) become -inf; equal scores rank by position, as ExactIndex
        scores, idx = ranked_search(self.index.search, queries, k, len(self))
        return scores, [[self.ids[j] if j >= 0 else None for j in row] for row in idx]

    def stored(self) -> int:
        return int(self.index.ntotal)

    def _save(self, folder: Path) -> Dict[str, Any]:
        faiss = require("faiss", "faiss")
        faiss.write_index(self.index, str(folder / "index.faiss"))
        return {"index_type": self.index_type, "nlist": self.nlist, "nprobe": self.nprobe, "m": self.m, "ef_search": self.ef_search}

    @classmethod
    def _load(cls, folder: Path, ids: List[str], settings: Dict[str, Any]) -> "FaissIndex":
        faiss = require("faiss", "faiss")
        index = faiss.read_index(str(folder / "index.faiss"))
        return cls(None, ids, settings["index_type"], settings.get("nlist"), settings.get("nprobe", 16),
                   settings.get("m", 32), settings.get("ef_search", 128), _index=index)
