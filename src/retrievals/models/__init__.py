"""Model classes. Each owns ``from_pretrained``/``save_pretrained`` and a small JSON config."""

from .embedding import AutoModelForEmbedding, EmbeddingConfig
from .pooling import POOLING_METHODS, pool

__all__ = ["AutoModelForEmbedding", "EmbeddingConfig", "POOLING_METHODS", "pool"]
