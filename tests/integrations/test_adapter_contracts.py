"""The adapters' input contract: settings they would ignore, texts they would split or reorder, models given as
paths, cache keys, and documents shared with the caller (each failed before its fix)."""

import numpy as np
import pytest

from retrievals import AutoModelForEmbedding, AutoModelForRanking

from ..conftest import corpus_lines, needs

DOCS = corpus_lines(12)
QUERY = DOCS[4][:30]


@pytest.fixture(scope="module")
def embedder(tiny_bert):
    return AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")


@pytest.fixture(scope="module")
def reranker(tiny_bert):
    return AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=64)


def test_langchain_settings_they_would_ignore_are_refused(embedder, reranker, tiny_qwen):
    # pydantic's extra="ignore" took search_kwargs={"k": 1} (LangChain's usual retriever option), top_k=1 for top_n,
    # max_new_tokens=3 for max_tokens: each built fine and did nothing
    needs("langchain_core")
    from pydantic import ValidationError

    from retrievals.integrations.langchain import LangchainLLM, LangchainReranker, LangchainRetriever
    from retrievals.models.generator import Generator

    with pytest.raises(ValidationError, match="search_kwargs"):
        LangchainRetriever.from_texts(DOCS, embedder, index_type="exact", search_kwargs={"k": 1})
    with pytest.raises(ValidationError, match="top_k"):
        LangchainReranker(model=reranker, top_k=1)
    gen = Generator.from_pretrained(tiny_qwen, use_chat_template=False)
    with pytest.raises(ValidationError, match="max_new_tokens"):
        LangchainLLM(generator=gen, max_new_tokens=3)
    for bad in ({"max_tokens": -1}, {"max_tokens": 2.5}, {"temperature": -1.0}, {"temperature": float("nan")},
                {"top_p": 2.0}, {"top_k": 0}):
        with pytest.raises(ValidationError):
            LangchainLLM(generator=gen, **bad)
    # LangChain's own settings still pass
    retriever = LangchainRetriever.from_texts(DOCS, embedder, index_type="exact", k=2, tags=["t"], metadata={"m": 1})
    assert retriever.tags == ["t"] and len(retriever.invoke(QUERY)) == 2
    assert LangchainLLM(generator=gen, max_tokens=3, tags=["x"]).tags == ["x"]


def test_langchain_texts_are_a_list_of_strings(embedder):
    needs("langchain_core")
    from langchain_core.documents import Document

    from retrievals.integrations.langchain import LangchainEmbedding, LangchainRetriever

    lc = LangchainEmbedding(model=embedder)
    # a dict gave one vector for its key, a set vectors in arbitrary order, an array failed on its truth value
    for bad, error in (({"text": "a"}, "texts must be"), ({"a", "b"}, "ordered sequence"), (b"ab", "texts must be")):
        with pytest.raises(TypeError, match=error):
            lc.embed_documents(bad)
    np.testing.assert_allclose(lc.embed_documents(np.array(DOCS[:2])), embedder.encode_corpus(DOCS[:2]), atol=1e-6)
    np.testing.assert_allclose(lc.embed_documents(d for d in DOCS[:2]), embedder.encode_corpus(DOCS[:2]), atol=1e-6)
    # from_texts("abc def") indexed its characters as 7 documents
    with pytest.raises(TypeError, match="texts must be a list of strings, got str"):
        LangchainRetriever.from_texts("abc def", embedder, index_type="exact")
    with pytest.raises(TypeError, match=r"metadatas\[1\] must be a dict"):
        LangchainRetriever.from_texts(DOCS[:2], embedder, metadatas=[{}, None], index_type="exact")
    with pytest.raises(TypeError, match=r"documents\[0\] must be a langchain Document"):
        LangchainRetriever.from_documents(["a"], embedder, index_type="exact")
    with pytest.raises(ValueError, match="2 texts but 1 ids"):
        LangchainRetriever.from_texts(DOCS[:2], embedder, ids=["x"], index_type="exact")
    # ids= (LangChain's from_texts argument) were dropped: each document now carries its own
    found = LangchainRetriever.from_texts((d for d in DOCS[:3]), embedder, ids=["x", "y", "z"], index_type="exact",
                                          k=3).invoke(DOCS[1])
    assert {d.id: d.page_content for d in found} == dict(zip("xyz", DOCS[:3]))
    assert isinstance(found[0], Document)


def test_langchain_retriever_keeps_its_own_copy_of_the_documents(embedder):
    needs("langchain_core")
    from langchain_core.documents import Document

    from retrievals.integrations.langchain import LangchainRetriever

    docs = [Document(page_content=t, metadata={"tags": [i]}) for i, t in enumerate(DOCS)]
    retriever = LangchainRetriever.from_documents(docs, embedder, index_type="exact", k=1)
    first = retriever.invoke(DOCS[3])[0]
    first.metadata["tags"].append("changed by a caller")  # nested metadata was shared with the stored document
    docs[3].page_content = "edited afterwards"  # the caller's Document was kept by reference
    again = retriever.invoke(DOCS[3])[0]
    assert again.page_content == DOCS[3] and again.metadata["tags"] == [3]


def test_a_path_given_as_the_model_is_refused_when_built(tiny_bert, tiny_qwen):
    # LangchainEmbedding("/path") built, then failed at its first call: 'str' object has no attribute 'encode_queries'
    needs("langchain_core")
    from retrievals.integrations.langchain import LangchainEmbedding, LangchainLLM, LangchainReranker

    with pytest.raises(TypeError, match=r"got the path .*: pass a path as model_name="):
        LangchainEmbedding(tiny_bert)
    with pytest.raises(TypeError, match="pass a path as model_name_or_path="):
        LangchainReranker(tiny_bert)
    with pytest.raises(TypeError, match="pass a path as model_name_or_path="):
        LangchainLLM(generator=tiny_qwen)
    with pytest.raises(TypeError, match="with a rerank method"):
        LangchainReranker(model=object())


def test_llama_index_adapters_refuse_paths_and_unknown_settings(tiny_bert, embedder, reranker):
    needs("llama_index.core")
    from pydantic import ValidationError

    from retrievals.integrations.llama_index import LlamaIndexEmbedding, LlamaIndexReranker

    with pytest.raises(TypeError, match="pass a path as model_name="):
        LlamaIndexEmbedding(tiny_bert)
    with pytest.raises(ValidationError, match="top_k"):  # top_n stayed 3, silently
        LlamaIndexReranker(model=reranker, top_k=1)
    with pytest.raises(ValidationError, match="embed_batchsize"):
        LlamaIndexEmbedding(model=embedder, embed_batchsize=8)
    li = LlamaIndexEmbedding(model=embedder, embed_batch_size=4)
    np.testing.assert_allclose(li.get_text_embedding_batch(DOCS[:5]), embedder.encode_corpus(DOCS[:5]), atol=1e-6)


def test_langchain_llm_cache_key_holds_every_setting_that_changes_answers(tiny_qwen):
    # top_k and top_p were not in the key: two differently sampling LLMs shared one cached answer
    needs("langchain_core")
    from langchain_core.caches import InMemoryCache

    from retrievals.integrations.langchain import LangchainLLM
    from retrievals.models.generator import Generator

    gen = Generator.from_pretrained(tiny_qwen, use_chat_template=False)
    cache = InMemoryCache()
    for top_k in (1, 50):
        LangchainLLM(generator=gen, temperature=1.0, top_k=top_k, max_tokens=4, cache=cache).invoke("the tax")
    LangchainLLM(generator=gen, temperature=1.0, top_p=0.5, max_tokens=4, cache=cache).invoke("the tax")
    assert len(cache._cache) == 3


def test_adapter_counts_are_checked_when_built(embedder, reranker):
    # top_n=-1 or batch_size=0 built fine and failed at the first call; True was taken as 1 (one document)
    needs("langchain_core")
    needs("llama_index.core")
    from pydantic import ValidationError

    from retrievals.integrations.langchain import LangchainReranker, LangchainRetriever
    from retrievals.integrations.llama_index import LlamaIndexReranker

    for adapter in (LangchainReranker, LlamaIndexReranker):
        for settings in ({"top_n": -1}, {"top_n": True}, {"batch_size": 0}, {"batch_size": 2.0}):
            with pytest.raises(ValidationError, match=next(iter(settings))):
                adapter(model=reranker, **settings)
        assert adapter(model=reranker, top_n=2, batch_size=4).top_n == 2
    for settings in ({"k": True}, {"fetch_k": -1}):
        with pytest.raises(ValidationError, match=next(iter(settings))):
            LangchainRetriever.from_texts(DOCS, embedder, index_type="exact", **settings)
