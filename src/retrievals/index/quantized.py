"""Quantized dense indexes (faiss): int8 (4x smaller than float32) and binary (32x), with float rescoring.

``int8``: each dimension calibrated to 256 levels over the indexed vectors (faiss' 8-bit scalar quantizer),
inner-product search. ``binary``: the sign of each dimension as one bit, Hamming search (``flat``, exact; or
``hnsw``). With ``rescore_multiplier`` m > 0, the best ``m * k`` candidates are rescored with the float query
against the stored codes (dequantized int8 values, or +-1 per bit), as the usual "rescoring" recipe does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..inputs import as_query_vectors
from ..utils import UsageError, require
from .base import Index, as_matrix

ENCODINGS = ("int8", "binary")


def binarize(vectors: np.ndarray) -> np.ndarray:
    """Sign bits (1 where > 0), packed 8 to a byte: [n, ceil(dim / 8)] uint8."""
    return np.packbits(np.asarray(vectors) > 0, axis=1)


def unbinarize(codes: np.ndarray, dim: int) -> np.ndarray:
    """+-1 float vectors from packed sign bits."""
    return np.unpackbits(codes, axis=1)[:, :dim].astype(np.float32) * 2 - 1


class QuantizedIndex(Index):
    """An int8 or binary faiss index of dense vectors, saved with its document ids; ``bytes_per_vector`` is the
    memory a vector takes in it (float32 would take ``4 * dim``)."""

    backend = "quantized"

    def __init__(self, vectors: Any, ids: Sequence[str], encoding: str = "binary", structure: str = "flat",
                 rescore_multiplier: int = 4, m: int = 32, _state: Any = None) -> None:
        super().__init__(ids)
        faiss = require("faiss", "faiss")
        if encoding not in ENCODINGS:
            raise UsageError(f"Unknown encoding {encoding!r}; choose one of {list(ENCODINGS)}.")
        if structure not in ("flat", "hnsw") or (encoding == "int8" and structure != "flat"):
            raise UsageError(f"structure {structure!r} is not available for {encoding} (int8: flat; binary: flat or hnsw).")
        if rescore_multiplier < 0:
            raise UsageError(f"rescore_multiplier must be >= 0, got {rescore_multiplier}.")
        self.encoding, self.structure, self.rescore_multiplier, self.m = encoding, structure, rescore_multiplier, m
        if _state is not None:
            self.index, self.dim = _state
            return
        x = as_matrix(vectors)
        if x.shape[0] != len(self.ids):
            raise UsageError(f"{x.shape[0]} vectors for {len(self.ids)} ids")
        self.dim = int(x.shape[1])
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
        return self.dim if self.encoding == "int8" else -(-self.dim // 8)

    def _queries(self, queries: Any) -> np.ndarray:
        return as_query_vectors(queries, self.dim)

    def _candidates(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        if self.encoding == "int8":
            return self.index.search(queries, k)
        distances, idx = self.index.search(binarize(queries), k)
        return -distances.astype(np.float32), idx  # fewer differing bits = better

    def _decoded(self, positions: np.ndarray) -> np.ndarray:
        if self.encoding == "int8":
            return self.index.reconstruct_batch(positions.astype(np.int64))
        return unbinarize(self._codes()[positions], self.dim)

    def _search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, List[List[str]]]:
        wide = min(len(self), k * self.rescore_multiplier) if self.rescore_multiplier else k
        scores, idx = self._candidates(queries, max(wide, k))
        if self.rescore_multiplier:
            rescored = np.full(idx.shape, -np.inf, dtype=np.float32)
            for row, (query, positions) in enumerate(zip(queries, idx)):
                valid = positions >= 0
                rescored[row, valid] = self._decoded(positions[valid]) @ query
            order = np.argsort(-rescored, axis=1, kind="stable")
            scores, idx = np.take_along_axis(rescored, order, 1), np.take_along_axis(idx, order, 1)
        scores, idx = scores[:, :k], idx[:, :k]
        return scores, [[self.ids[j] if j >= 0 else None for j in row] for row in idx]

    def _save(self, folder: Path) -> Dict[str, Any]:
        faiss = require("faiss", "faiss")
        if self.encoding == "int8":
            faiss.write_index(self.index, str(folder / "index.faiss"))
        else:
            faiss.write_index_binary(self.index, str(folder / "index.faiss"))
        return {"encoding": self.encoding, "structure": self.structure, "rescore_multiplier": self.rescore_multiplier,
                "m": self.m, "dim": self.dim}

    @classmethod
    def _load(cls, folder: Path, ids: List[str], settings: Dict[str, Any]) -> "QuantizedIndex":
        faiss = require("faiss", "faiss")
        read = faiss.read_index if settings["encoding"] == "int8" else faiss.read_index_binary
        state = (read(str(folder / "index.faiss")), settings["dim"])
        return cls(None, ids, settings["encoding"], settings["structure"], settings["rescore_multiplier"], settings["m"],
                   _state=state)
