"""Search over documents: one base class (:class:`Index`) and one file per backend."""

from .base import INDEXES, Index, Run
from .bm25 import BM25Index
from .exact import ExactIndex, exact_search
from .faiss_index import FAISS_TYPES, FaissIndex
from .hybrid import FUSIONS, check_fusion, fuse, reciprocal_rank_fusion, weighted_score_fusion
from .quantized import QuantizedIndex, binarize
from .sparse import SparseIndex
from .retrieval import QUANTIZED_TYPES, AutoRetrieval, build_dense_index

__all__ = ["AutoRetrieval", "BM25Index", "build_dense_index", "ExactIndex", "FAISS_TYPES", "FaissIndex", "INDEXES", "Index", "QUANTIZED_TYPES", "QuantizedIndex", "Run", "SparseIndex", "binarize",
           "exact_search",
           "reciprocal_rank_fusion", "weighted_score_fusion", "FUSIONS", "check_fusion", "fuse"]
