"""Quantized dense indexes (faiss): int8 (4x smaller than float32) and binary (32x), with float rescoring.

``int8``: each dimension calibrated to 256 levels over the indexed vectors (faiss' 8-bit scalar quantizer),
inner-product search. ``binary``: the sign of each dimension as one bit, Hamming search (``flat``, exact; or
``hnsw``). With ``rescore_multiplier`` m > 0, the best ``m * k`` candidates are rescored with the float query
against the stored codes (dequantized int8 values, or +-1 per bit), as the usual "rescoring" recipe does.
A binary index can rescore against int8 codes instead (``rescore_with="int8"``): they are kept in a file that is
memory-mapped, so memory stays at the bits while rescoring reads only the candidates' rows from disk (the
"binary search, int8 rescoring" recipe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..inputs import as_query_vectors, check_int
from ..utils import UsageError, require
from .base import Index, as_matrix, ranked_search

ENCODINGS = ("int8", "binary")
RESCORE_WITH = ("codes", "int8")
RESCORE_FILE = "rescore_int8.npy"  # uint8 codes, one row per document, read through a memory map


def binarize(vectors: np.ndarray) -> np.ndarray:
    """Sign bits (1 where > 0), packed 8 to a byte: [n, ceil(dim / 8)] uint8 (one 1-D vector is one row)."""
    return np.packbits(np.atleast_2d(np.asarray(vectors)) > 0, axis=1)


def unbinarize(codes: np.ndarray, dim: int) -> np.ndarray:
    """+-1 float vectors from packed sign bits."""
    return np.unpackbits(codes, axis=1)[:, :dim].astype(np.float32) * 2 - 1


class QuantizedIndex(Index):
    """An int8 or binary faiss index of dense vectors, saved with its document ids; ``bytes_per_vector`` is the
    memory a vector takes in it (float32 would take ``4 * dim``)."""

    backend = "quantized"

    def __init__(self, vectors: Any, ids: Sequence[str], encoding: str = "binary", structure: str = "flat",
                 rescore_multiplier: int = 4, m: int = 32, rescore_with: str = "codes", _state: Any = None) -> None:
        super().__init__(ids)
        faiss = require("faiss", "faiss")
        if encoding not in ENCODINGS:
            raise UsageError(f"Unknown encoding {encoding!r}; choose one of {list(ENCODINGS)}.")
        if structure not in ("flat", "hnsw") or (encoding == "int8" and structure != "flat"):
            raise UsageError(f"structure {structure!r} is not available for {encoding} (int8: flat; binary: flat or hnsw).")
        rescore_multiplier, m = check_int("rescore_multiplier", rescore_multiplier, 0), check_int("m", m, 2)
        if rescore_with not in RESCORE_WITH or (rescore_with == "int8" and encoding != "binary"):
            raise UsageError(f"rescore_with {rescore_with!r}: choose 'codes', or 'int8' for a binary index.")
        self.encoding, self.structure, self.rescore_multiplier, self.m = encoding, structure, rescore_multiplier, m
        self.rescore_with = rescore_with
        if _state is not None:
            self.index, self.dim, self.rescore_codes, self.rescore_scale = _state
            return
        x = as_matrix(vectors)
        if x.shape[0] != len(self.ids):
            raise UsageError(f"{x.shape[0]} vectors for {len(self.ids)} ids")
        if not len(x) and (encoding == "int8" or rescore_with == "int8"):  # faiss' own failure names nothing
            raise UsageError("QuantizedIndex: int8 codes are calibrated on the vectors indexed, and none were given.")
        self.dim = int(x.shape[1])
        self.rescore_codes, self.rescore_scale = None, None
        if rescore_with == "int8":
            low, high = x.min(axis=0), x.max(axis=0)
            step = np.where(high > low, (high - low) / 255.0, 1.0).astype(np.float32)
            self.rescore_codes = np.rint((x - low) / step).clip(0, 255).astype(np.uint8)
            self.rescore_scale = np.stack([low, step]).astype(np.float32)  # value = low + code * step, per dimension
        if encoding == "int8":
            self.index = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            self.index.train(x)
            self.index.add(x)
        else:
            codes = binarize(x)
            bits = codes.shape[1] * 8
            self.index = faiss.IndexBinaryFlat(bits) if structure == "flat" else faiss.IndexBinaryHNSW(bits, m)
            self.index.add(codes)

    def _codes(self) -> np.ndarray:
        """The binary codes as a view of the faiss index's own storage (no second copy in memory or on disk)."""
        faiss = require("faiss", "faiss")
        flat = faiss.downcast_IndexBinary(self.index.storage) if self.structure == "hnsw" else self.index
        return faiss.rev_swig_ptr(flat.xb.data(), flat.ntotal * flat.code_size).reshape(-1, flat.code_size)

    @property
    def bytes_per_vector(self) -> int:
        """Memory per vector in the search structure (HNSW adds its graph; int8 rescoring codes stay on disk)."""
        return self.dim if self.encoding == "int8" else -(-self.dim // 8)

    def _queries(self, queries: Any) -> np.ndarray:
        return as_query_vectors(queries, self.dim)

    def _candidates(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """The best ``k`` by the codes, equal scores (many, for Hamming distances) by position (see ranked_search)."""
        return ranked_search(self._code_search, queries, k, len(self))

    def _code_search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        if self.encoding == "int8":
            return self.index.search(queries, k)
        distances, idx = self.index.search(binarize(queries), k)
        return -distances.astype(np.float32), idx  # fewer differing bits = better

    def _decoded(self, positions: np.ndarray) -> np.ndarray:
        if self.rescore_codes is not None:
            return self.rescore_scale[0] + self.rescore_codes[positions].astype(np.float32) * self.rescore_scale[1]
        if self.encoding == "int8":
            return self.index.reconstruct_batch(positions.astype(np.int64))
        return unbinarize(self._codes()[positions], self.dim)

    def _search_wider(self, queries: np.ndarray, width: int, k: int) -> Tuple[np.ndarray, List[List[str]]]:
        return self._search(queries, width, pool_for=k)

    def _search(self, queries: np.ndarray, k: int, pool_for: Optional[int] = None) -> Tuple[np.ndarray, List[List[str]]]:
        # the rescored candidates: rescore_multiplier x the k asked, as sentence-transformers' quantized search (so
        # the results of a larger k may differ); pool_for: search_run's k while it asks for more to settle ties,
        # which gets no candidate beyond that pool (with a multiplier of 1, the k + 1-th by the codes entered the top k)
        pool = min(len(self), (pool_for or k) * self.rescore_multiplier) if self.rescore_multiplier else k
        scores, idx = self._candidates(queries, pool)
        if self.rescore_multiplier:
            rescored = np.full(idx.shape, -np.inf, dtype=np.float32)
            for row, (query, positions) in enumerate(zip(queries, idx)):
                valid = positions >= 0
                rescored[row, valid] = self._decoded(positions[valid]) @ query
            order = np.lexsort((np.where(idx < 0, len(self), idx), -rescored), axis=1)  # equal scores by position
            scores, idx = np.take_along_axis(rescored, order, 1), np.take_along_axis(idx, order, 1)
        scores, idx = scores[:, :k], np.ascontiguousarray(idx[:, :k])
        scores = np.where(idx < 0, -np.inf, scores).astype(np.float32)  # slots no document reached (Index.search)
        return scores, [[self.ids[j] if j >= 0 else None for j in row] for row in idx]

    def stored(self) -> int:
        return int(self.index.ntotal)

    def _save(self, folder: Path) -> Dict[str, Any]:
        faiss = require("faiss", "faiss")
        if self.encoding == "int8":
            faiss.write_index(self.index, str(folder / "index.faiss"))
        else:
            faiss.write_index_binary(self.index, str(folder / "index.faiss"))
        if self.rescore_codes is not None:
            np.save(folder / RESCORE_FILE, np.asarray(self.rescore_codes))
        return {"encoding": self.encoding, "structure": self.structure, "rescore_multiplier": self.rescore_multiplier,
                "m": self.m, "dim": self.dim, "rescore_with": self.rescore_with,
                "rescore_scale": None if self.rescore_scale is None else self.rescore_scale.tolist()}

    @classmethod
    def _load(cls, folder: Path, ids: List[str], settings: Dict[str, Any]) -> "QuantizedIndex":
        faiss = require("faiss", "faiss")
        read = faiss.read_index if settings["encoding"] == "int8" else faiss.read_index_binary
        rescore_with = settings.get("rescore_with", "codes")
        codes = np.load(folder / RESCORE_FILE, mmap_mode="r") if rescore_with == "int8" else None
        scale = np.asarray(settings["rescore_scale"], dtype=np.float32) if codes is not None else None
        state = (read(str(folder / "index.faiss")), settings["dim"], codes, scale)
        return cls(None, ids, settings["encoding"], settings["structure"], settings["rescore_multiplier"], settings["m"],
                   rescore_with, _state=state)
