"""LlamaIndex (llama-index-core) adapters: an embedding model and a reranking node postprocessor.

    pip install 'retrievals[llama-index]'
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional

from ..utils import require

require("llama_index.core", "llama-index")

from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle  # noqa: E402
from pydantic import ConfigDict, Field, PrivateAttr  # noqa: E402

from ..inputs import as_texts  # noqa: E402
from ..models.embedding import AutoModelForEmbedding  # noqa: E402
from ..models.rankers import AutoModelForRanking  # noqa: E402
from .common import model_or_load  # noqa: E402


class LlamaIndexEmbedding(BaseEmbedding):
    """``BaseEmbedding`` backed by :class:`AutoModelForEmbedding`; queries get the query instruction."""

    # a misspelt setting (embed_batchsize=8) was accepted and ignored: refused, as LlamaIndexReranker(top_k=1) is
    model_config = ConfigDict(extra="forbid")

    _model: Any = PrivateAttr()
    _encode_kwargs: Dict[str, Any] = PrivateAttr(default_factory=dict)

    def __init__(self, model: Optional[AutoModelForEmbedding] = None, model_name: Optional[str] = None,
                 model_kwargs: Optional[Dict[str, Any]] = None, encode_kwargs: Optional[Dict[str, Any]] = None,
                 **kwargs: Any) -> None:
        loaded = model_or_load(model, model_name, AutoModelForEmbedding, model_kwargs, "AutoModelForEmbedding",
                               "model_name", "encode_queries")
        super().__init__(model_name=str(model_name or "retrievals"), **kwargs)
        self._model = loaded
        self._encode_kwargs = dict(encode_kwargs or {})

    @classmethod
    def class_name(cls) -> str:
        return "RetrievalsEmbedding"

    def _get_query_embedding(self, query: str) -> List[float]:
        return self._model.encode_queries([query], **self._encode_kwargs)[0].tolist()

    # async: the model runs in a worker thread (the model is thread-safe), not on the event loop, which would stall
    # every other task for the whole encoding; a list stays one batched call (llama-index's default is one per text)
    async def _aget_query_embedding(self, query: str) -> List[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> List[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    def _get_text_embedding(self, text: str) -> List[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        texts, _ = as_texts(texts, "texts")  # a str would be its characters, a set in arbitrary order
        return self._model.encode_corpus(texts, **self._encode_kwargs).tolist() if texts else []


class LlamaIndexReranker(BaseNodePostprocessor):
    """Node postprocessor: rescores nodes with any of our rerankers (score normalised to [0, 1]) and keeps
    the ``top_n`` best."""

    model_config = ConfigDict(extra="forbid")  # top_k=1 (for top_n) was accepted and ignored

    # strict: True was taken as 1 (one node), and a negative top_n or a 0 batch failed at the first call only
    top_n: int = Field(3, ge=0, strict=True)
    batch_size: int = Field(32, ge=1, strict=True)
    _model: Any = PrivateAttr()

    def __init__(self, model: Any = None, model_name_or_path: Optional[str] = None,
                 model_kwargs: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        loaded = model_or_load(model, model_name_or_path, AutoModelForRanking, model_kwargs, "reranker", "model_name_or_path",
                               "rerank")
        super().__init__(**kwargs)
        self._model = loaded

    @classmethod
    def class_name(cls) -> str:
        return "RetrievalsReranker"

    def _postprocess_nodes(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("LlamaIndexReranker needs the query (query_bundle).")
        if not nodes:
            return []
        # what the embedding saw: the text with its metadata (llama-index's own rerankers score this content too)
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        results = self._model.rerank(query_bundle.query_str, texts, top_k=self.top_n, batch_size=self.batch_size, normalize=True)
        return [NodeWithScore(node=nodes[r.index].node, score=r.score) for r in results]
