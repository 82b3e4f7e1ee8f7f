"""retrievals: fine-tune, evaluate and serve retrieval models."""

__version__ = "0.1.0"

from .models.embedding import AutoModelForEmbedding  # noqa: E402
from .models.rankers import AutoModelForRanking, RerankResult  # noqa: E402

__all__ = ["AutoModelForEmbedding", "AutoModelForRanking", "RerankResult", "__version__"]
