"""Evaluation: ranking metrics and retrieval evaluation of models."""

from .metrics import evaluate_run
from .retrieval import evaluate_embedder

__all__ = ["evaluate_embedder", "evaluate_run"]
