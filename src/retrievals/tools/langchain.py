"""``from retrievals.tools.langchain import LangchainEmbedding, LangchainReranker, LangchainLLM`` as in the
original project; see :mod:`retrievals.integrations.langchain`."""

from ..integrations.langchain import LangchainEmbedding, LangchainLLM, LangchainReranker, LangchainRetriever

__all__ = ["LangchainEmbedding", "LangchainLLM", "LangchainReranker", "LangchainRetriever"]
