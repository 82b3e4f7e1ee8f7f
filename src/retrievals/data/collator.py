"""Collators: tokenize with the model's own tokenization and pad per batch (dynamic padding)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch


class EmbeddingCollator:
    """Turn ``[{"query", "documents"}]`` items into ``{"query": batch, "document": batch}``.

    Documents are flattened query-major: row ``i * group + j`` is document ``j`` of query ``i``
    (``j == 0`` is the positive). Tokenization goes through ``model.processor`` so training sees
    exactly what inference sees (instructions, truncation, EOS). ``pad_to_multiple_of`` rounds the padded
    widths up (see :class:`retrievals.models.processing.PaddingOptions`).
    """

    def __init__(self, processor: Any, pad_to_multiple_of: Optional[int] = None) -> None:
        # a TextProcessor (``model.processor``); a copy when padding differs, so inference keeps its own
        self.processor = processor if pad_to_multiple_of is None else processor.with_pad_to_multiple_of(pad_to_multiple_of)

    def __call__(self, items: List[Dict[str, Any]]) -> Dict[str, Dict[str, torch.Tensor]]:
        queries = [item["query"] for item in items]
        documents = [doc for item in items for doc in item["documents"]]
        return {
            "query": self.processor.pad(self.processor.tokenize(queries, is_query=True)),
            "document": self.processor.pad(self.processor.tokenize(documents, is_query=False)),
        }
