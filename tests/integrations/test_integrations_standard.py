"""LangChain's standard test suites (``langchain-tests``) run against our LangChain adapters, on the tiny
random BERT of ``conftest.py``.

The suites are used as published: no standard test is overridden, skipped or weakened (their own
``test_no_overrides_DO_NOT_OVERRIDE`` checks that). Their async tests run under pytest-asyncio
(``asyncio_mode = "auto"`` in pyproject.toml, as in LangChain's own packages).

Not covered by a standard suite, because none exists:

- ``LangchainReranker`` (a ``BaseDocumentCompressor``): langchain-tests has no suite for document
  compressors; ``tests/test_integrations.py`` tests it.
- LlamaIndex: ``llama-index-core`` ships no standard tests (no test package, nothing for
  ``BaseEmbedding`` or node postprocessors); ``tests/test_integrations.py`` tests those adapters.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Type

import pytest

from ..conftest import corpus_lines, needs

needs("langchain_core")
needs("langchain_tests")
needs("pytest_asyncio")  # runs the suites' async tests

from langchain_core.documents import Document  # noqa: E402
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, RetrieversIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import EmbeddingsUnitTests  # noqa: E402

from retrievals import AutoModelForEmbedding, AutoModelForRanking  # noqa: E402
from retrievals.integrations.langchain import LangchainEmbedding, LangchainReranker, LangchainRetriever  # noqa: E402

TEXTS = corpus_lines(12)
EMBED_KWARGS = {"pooling_method": "mean", "query_instruction": "query: "}
_TINY: Dict[str, str] = {}  # the session's tiny BERT folder, set by the autouse fixture below


@pytest.fixture(scope="module", autouse=True)
def _tiny_bert_path(tiny_bert):
    """The suites read their settings from class properties, not fixtures: hand them the fixture's folder."""
    _TINY["bert"] = tiny_bert
    yield
    _TINY.clear()


@functools.lru_cache(maxsize=None)
def _embedder(path: str) -> AutoModelForEmbedding:
    return AutoModelForEmbedding.from_pretrained(path, **EMBED_KWARGS)


@functools.lru_cache(maxsize=None)
def _exact_index(path: str):
    return _embedder(path).build_index(TEXTS, index_type="exact")


@functools.lru_cache(maxsize=None)
def _reranker(path: str) -> LangchainReranker:
    return LangchainReranker(model=AutoModelForRanking.from_pretrained(path, model_type="cross-encoder", max_length=64))


def _documents():
    return [Document(page_content=t, metadata={"row": i}, id=f"doc-{i}") for i, t in enumerate(TEXTS)]


class _EmbeddingSettings:
    @property
    def embeddings_class(self) -> Type[LangchainEmbedding]:
        return LangchainEmbedding

    @property
    def embedding_model_params(self) -> Dict[str, Any]:
        return {"model_name": _TINY["bert"], "model_kwargs": EMBED_KWARGS, "encode_kwargs": {"batch_size": 2}}


class TestLangchainEmbeddingUnit(_EmbeddingSettings, EmbeddingsUnitTests):
    pass


class TestLangchainEmbeddingIntegration(_EmbeddingSettings, EmbeddingsIntegrationTests):
    pass


class TestLangchainRetriever(RetrieversIntegrationTests):
    """Over an exact index of 12 documents."""

    @property
    def retriever_constructor(self) -> Type[LangchainRetriever]:
        return LangchainRetriever

    @property
    def retriever_constructor_params(self) -> Dict[str, Any]:
        path = _TINY["bert"]
        return {"embedder": _embedder(path), "index": _exact_index(path), "documents": _documents()}

    @property
    def retriever_query_example(self) -> str:
        return TEXTS[4][:30]


class TestLangchainRetrieverReranked(TestLangchainRetriever):
    """The same retriever with a cross-encoder reranking the index's best ``fetch_k``."""

    @property
    def retriever_constructor_params(self) -> Dict[str, Any]:
        return {**super().retriever_constructor_params, "reranker": _reranker(_TINY["bert"]), "fetch_k": 8}
