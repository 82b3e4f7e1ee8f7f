"""Evaluation: ranking metrics and retrieval evaluation of models."""

from .metrics import evaluate_run
from .reranking import evaluate_reranking, score_candidates
from .retrieval import evaluate_embedder, rerank_run, retrieve

__all__ = ["evaluate_embedder", "evaluate_reranking", "evaluate_run", "rerank_run", "retrieve", "score_candidates"]
