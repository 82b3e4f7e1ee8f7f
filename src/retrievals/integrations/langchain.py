"""LangChain (langchain-core 1.x) adapters: embeddings, a reranking document compressor, a retriever over
our index, and a local causal LM.

    pip install 'retrievals[langchain]'

Each adapter takes a loaded model or a path plus ``model_kwargs`` (pooling, instructions, device,
dtype ... as accepted by the model's ``from_pretrained``).
"""

from __future__ import annotations

import copy
import numbers
from typing import Any, Dict, List, Optional, Sequence

from ..utils import require

require("langchain_core", "langchain")

from langchain_core.callbacks import (  # noqa: E402
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForLLMRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.language_models.llms import LLM  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from langchain_core.runnables.config import run_in_executor  # noqa: E402
from pydantic import ConfigDict, Field, model_validator  # noqa: E402

from ..index import Index  # noqa: E402
from ..inputs import as_texts  # noqa: E402
from ..models.embedding import AutoModelForEmbedding  # noqa: E402
from ..models.generator import Generator  # noqa: E402
from ..models.rankers import AutoModelForRanking  # noqa: E402
from .common import model_or_load  # noqa: E402


class LangchainEmbedding(Embeddings):
    """``Embeddings`` backed by :class:`AutoModelForEmbedding`: ``embed_query`` applies the query instruction."""

    def __init__(self, model: Optional[AutoModelForEmbedding] = None, model_name: Optional[str] = None,
                 model_kwargs: Optional[Dict[str, Any]] = None, encode_kwargs: Optional[Dict[str, Any]] = None) -> None:
        self.model = model_or_load(model, model_name, AutoModelForEmbedding, model_kwargs, "AutoModelForEmbedding",
                                   "model_name", "encode_queries")
        self.encode_kwargs = dict(encode_kwargs or {})

    def embed_documents(self, texts: List[str]) -> List[List[float]]:
        # one string would be its characters (one vector each, silently), a dict its keys, a set in arbitrary order
        if texts is None or isinstance(texts, str):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__} (one document: "
                            "embed_documents([text]))")
        texts, _ = as_texts(texts, "texts")
        return self.model.encode_corpus(texts, **self.encode_kwargs).tolist() if texts else []

    def embed_query(self, text: str) -> List[float]:
        return self.model.encode_queries([text], **self.encode_kwargs)[0].tolist()


class LangchainReranker(BaseDocumentCompressor):
    """Document compressor that keeps the ``top_n`` documents by reranker score, best first; each kept
    document gets ``metadata["relevance_score"]`` (normalised to [0, 1])."""

    # extra="forbid": a misspelt setting (top_k=1 for top_n) was accepted and ignored
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: Any
    # strict: True was taken as 1 (one document), and a negative top_n or a 0 batch failed at the first call only
    top_n: int = Field(3, ge=0, strict=True)
    batch_size: int = Field(32, ge=1, strict=True)

    def __init__(self, model: Any = None, model_name_or_path: Optional[str] = None,
                 model_kwargs: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(model=model_or_load(model, model_name_or_path, AutoModelForRanking, model_kwargs, "reranker",
                                                   "model_name_or_path", "rerank"), **kwargs)

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks: Any = None) -> List[Document]:
        docs = list(documents)
        if not docs:
            return []
        results = self.model.rerank(query, [d.page_content for d in docs], top_k=self.top_n, batch_size=self.batch_size,
                                    normalize=True)
        return [Document(page_content=docs[r.index].page_content, id=docs[r.index].id,
                         metadata={**docs[r.index].metadata, "relevance_score": r.score}) for r in results]


class LangchainRetriever(BaseRetriever):
    """Retriever over one of our indexes (faiss flat/IVF/HNSW or exact), optionally reranked.

    Build it with :meth:`from_texts` or :meth:`from_documents`; ``k`` documents come back (fewer when the
    index holds fewer), each with ``metadata["score"]`` (the index score). With a ``reranker``, the best
    ``max(k, fetch_k)`` by the index are reranked and the best ``k`` of them kept (the reranker's
    ``top_n`` does not apply here: ``k`` alone sets how many come back).

    ``k`` and ``fetch_k`` can also be set for one call: ``retriever.invoke(query, k=2)`` (likewise
    ``ainvoke``, ``batch``); any other keyword is a ``TypeError``.
    """

    # extra="forbid": LangChain's usual search_kwargs={"k": 1}, or top_k=1, were accepted and ignored
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    embedder: Any
    index: Any
    documents: List[Document]
    k: int = Field(4, ge=0, strict=True)  # strict: k=True was one document (the per-call k refuses a bool)
    fetch_k: int = Field(20, ge=0, strict=True)
    reranker: Optional[LangchainReranker] = None
    encode_kwargs: Dict[str, Any] = Field(default_factory=dict)  # a LangchainEmbedding's: documents and queries alike

    @model_validator(mode="after")
    def _index_holds_the_documents(self) -> "LangchainRetriever":
        # a search's ids are positions in documents: another index would return other documents, or fail unclearly
        if list(self.index.ids) != [str(i) for i in range(len(self.documents))]:
            raise ValueError(f"index holds {len(self.index)} documents with ids {list(self.index.ids)[:3]}...; it must "
                             f"hold the {len(self.documents)} documents by position ('0', '1', ...): build the retriever "
                             "with from_texts or from_documents.")
        return self

    @classmethod
    def from_documents(cls, documents: Sequence[Document], embedding: Any, index_type: str = "flat",
                       batch_size: int = 32, **kwargs: Any) -> "LangchainRetriever":
        """Encode ``documents`` with ``embedding`` (an :class:`AutoModelForEmbedding` or :class:`LangchainEmbedding`,
        whose ``encode_kwargs`` then apply to the documents and to every query, as they do in it)."""
        encode_kwargs = dict(embedding.encode_kwargs) if isinstance(embedding, LangchainEmbedding) else {}
        embedder = embedding.model if isinstance(embedding, LangchainEmbedding) else embedding
        if documents is None or isinstance(documents, (str, Document)):
            raise TypeError(f"documents must be a list of Documents, got {type(documents).__name__}")
        # copies: a caller editing its Documents (or a search's nested metadata) afterwards would change what later
        # searches return while the index keeps the old texts' vectors
        docs = copy.deepcopy(list(documents))
        for i, doc in enumerate(docs):
            if not isinstance(doc, Document):
                raise TypeError(f"documents[{i}] must be a langchain Document, got {type(doc).__name__} (texts: from_texts)")
        index = embedder.build_index([d.page_content for d in docs], index_type=index_type, batch_size=batch_size,
                                     encode_kwargs=encode_kwargs)
        return cls(embedder=embedder, index=index, documents=docs, encode_kwargs=encode_kwargs, **kwargs)

    @classmethod
    def from_texts(cls, texts: Sequence[str], embedding: Any, metadatas: Optional[Sequence[dict]] = None,
                   ids: Optional[Sequence[str]] = None, **kwargs: Any) -> "LangchainRetriever":
        """``texts`` with their ``metadatas`` (one dict each) and ``ids`` (one string each, as ``Document.id``)."""
        if isinstance(texts, str):  # its characters would be the documents
            raise TypeError("texts must be a list of strings, got str (one document: from_texts([text], ...))")
        texts, _ = as_texts(texts, "texts")
        metadatas = [{} for _ in texts] if metadatas is None else _same_length(metadatas, texts, "metadatas", dict)
        ids = [None for _ in texts] if ids is None else _same_length(ids, texts, "ids", str)
        return cls.from_documents([Document(page_content=t, metadata=m, id=i) for t, m, i in zip(texts, metadatas, ids)],
                                  embedding, **kwargs)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: Optional[int] = None,
                                fetch_k: Optional[int] = None, **kwargs: Any) -> List[Document]:
        # invoke() hands on every keyword it gets; "verbose" is its own (callbacks), anything else is a mistake
        unknown = sorted(set(kwargs) - {"verbose"})
        if unknown:
            raise TypeError(f"LangchainRetriever got unexpected keyword argument(s) {unknown}; it takes k and fetch_k")
        k = _count("k", self.k if k is None else k)
        fetch_k = _count("fetch_k", self.fetch_k if fetch_k is None else fetch_k)
        index: Index = self.index
        depth = max(k, fetch_k) if self.reranker is not None else k
        if k == 0:
            return []
        scores, ids = index.search(self.embedder.encode_queries([query], **self.encode_kwargs), min(depth, len(index)))
        found = [Document(page_content=self.documents[int(i)].page_content, id=self.documents[int(i)].id,
                          metadata={**copy.deepcopy(self.documents[int(i)].metadata), "score": float(s)})
                 for s, i in zip(scores[0], ids[0]) if i is not None]
        if self.reranker is not None:
            return self.reranker.model_copy(update={"top_n": k}).compress_documents(found, query)
        return found

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       **kwargs: Any) -> List[Document]:
        # BaseRetriever's default drops the call's keywords (k, fetch_k): run the sync search in a thread with them
        return await run_in_executor(None, self._get_relevant_documents, query, run_manager=run_manager.get_sync(),
                                     **kwargs)


def _same_length(items: Any, texts: List[str], name: str, kind: type) -> List[Any]:
    """``items`` (one per text, each a ``kind``) as a list; a str or a dict is one value, not a sequence of them."""
    if isinstance(items, (str, bytes, dict)) or not hasattr(items, "__iter__"):
        raise TypeError(f"{name} must be a list with one {kind.__name__} per text, got {type(items).__name__}")
    items = list(items)
    if len(items) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(items)} {name}")
    for i, item in enumerate(items):
        if not isinstance(item, kind):
            raise TypeError(f"{name}[{i}] must be a {kind.__name__}, got {type(item).__name__}")
    return items


def _count(name: str, value: Any) -> int:
    """A number of documents (``k``, ``fetch_k``) given to one call: an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


class LangchainLLM(LLM):
    """A local causal LM (for example SmolLM2-135M-Instruct) as a LangChain ``LLM``: the prompt is sent as one
    chat turn; greedy decoding unless ``temperature > 0``."""

    # extra="forbid": max_new_tokens=3 (for max_tokens) or seed=3 were accepted and ignored
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    generator: Any
    # checked when built: max_tokens=-1 or temperature=-1 were accepted and failed (or meant greedy) at the first call
    max_tokens: int = Field(256, ge=1, strict=True)
    temperature: float = Field(0.0, ge=0, allow_inf_nan=False)
    top_k: Optional[int] = Field(None, ge=1, strict=True)
    top_p: Optional[float] = Field(None, gt=0, le=1)

    def __init__(self, model_name_or_path: Optional[str] = None, generator: Optional[Generator] = None,
                 model_kwargs: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(generator=model_or_load(generator, model_name_or_path, Generator, model_kwargs, "Generator",
                                                       "model_name_or_path", "generate"), **kwargs)

    @property
    def _llm_type(self) -> str:
        return "retrievals-local"

    @property
    def _identifying_params(self) -> Dict[str, Any]:
        # LangChain's cache key: every setting that changes an answer (top_k and top_p shared one entry before)
        gen = self.generator
        return {"model": getattr(gen.model.config, "_name_or_path", ""), "dtype": str(gen.model.dtype),
                "use_chat_template": gen.use_chat_template, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}

    def _call(self, prompt: str, stop: Optional[List[str]] = None, run_manager: Optional[CallbackManagerForLLMRun] = None,
              **kwargs: Any) -> str:
        unknown = sorted(set(kwargs) - {"max_tokens", "temperature", "top_k", "top_p", "seed"})
        if unknown:  # silently ignored, they would look applied
            raise TypeError(f"LangchainLLM got unexpected keyword argument(s) {unknown}; it takes max_tokens, temperature, "
                            "top_k, top_p and seed")
        return self.generator.generate(prompt, max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
                                       temperature=kwargs.get("temperature", self.temperature),
                                       top_k=kwargs.get("top_k", self.top_k), top_p=kwargs.get("top_p", self.top_p),
                                       stop=stop, seed=kwargs.get("seed"))
