"""Model classes. Each owns ``from_pretrained``/``save_pretrained`` and a small JSON config."""

from .embedding import AutoModelForEmbedding, EmbeddingConfig
from .pooling import POOLING_METHODS, pool
from .sparse import SparseConfig, SparseEmbedder  # registers the sparse kind with AutoModelForEmbedding

__all__ = ["AutoModelForEmbedding", "EmbeddingConfig", "POOLING_METHODS", "pool", "SparseConfig", "SparseEmbedder"]
