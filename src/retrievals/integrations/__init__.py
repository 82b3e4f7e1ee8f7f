"""Adapters for other frameworks, each behind its optional extra: ``langchain`` (langchain-core 1.x) and
``llama_index`` (llama-index-core). Import the submodule you need."""
