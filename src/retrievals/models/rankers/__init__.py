"""Rerankers: cross-encoder, ColBERT and LLM, one interface (``compute_score``, ``rerank``) and one result type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Type

from ..base import CONFIG_NAME, check_model_path, hf_config, is_decoder_only, is_lora_dir, lora_base_of
from .base import BaseRanker, RankerConfig, RankingOutput, RerankResult
from .colbert import COLBERT_LINEAR, ColBERT, ColBERTConfig, maxsim
from .cross_encoder import CrossEncoder, CrossEncoderConfig
from .llm import LLMRanker, LLMRankerConfig
from ...utils import UsageError

RANKERS: Dict[str, Type[BaseRanker]] = {"cross-encoder": CrossEncoder, "colbert": ColBERT, "llm": LLMRanker}


def normalize_model_type(model_type: str) -> str:
    key = model_type.lower().replace("_", "-").replace("crossencoder", "cross-encoder")
    if key not in RANKERS:
        raise UsageError(f"Unknown model_type {model_type!r}; choose one of {list(RANKERS)}.")
    return key


def infer_model_type(path: str, trust_remote_code: bool = False) -> str:
    """The saved type, else ``colbert`` when a ``colbert_linear.pt`` is there, ``llm`` for decoder LMs
    without a classification head, else ``cross-encoder``."""
    folder = Path(check_model_path(path))
    saved = folder / CONFIG_NAME
    if saved.is_file():
        kind = json.loads(saved.read_text(encoding="utf-8")).get("model_type", "")
        if kind in RANKERS:
            return kind
        raise UsageError(f"{saved}: a {kind!r} model, not a reranker (load it with its own class).")
    if (folder / COLBERT_LINEAR).is_file():
        return "colbert"
    config = hf_config(lora_base_of(path) if is_lora_dir(path) else path, trust_remote_code)
    heads = [a for a in (getattr(config, "architectures", None) or []) if a.endswith("ForSequenceClassification")]
    return "llm" if is_decoder_only(config) and not heads else "cross-encoder"


class AutoModelForRanking:
    """Load any reranker: ``AutoModelForRanking.from_pretrained(path, model_type=None, causal_lm=False, ...)``."""

    def __init__(self) -> None:
        raise TypeError("Use AutoModelForRanking.from_pretrained(...)")

    @staticmethod
    def from_pretrained(model_name_or_path: str, model_type: Optional[str] = None, causal_lm: bool = False, **kwargs: Any) -> BaseRanker:
        """``model_type``: cross-encoder | colbert | llm; inferred when None (``causal_lm=True`` means llm).
        Other keyword arguments go to the class's ``from_pretrained`` (LoRA, dtype, device, config fields)."""
        path = check_model_path(model_name_or_path)
        if model_type is not None:
            kind = normalize_model_type(model_type)
        elif causal_lm:
            kind = "llm"
        else:
            kind = infer_model_type(path, kwargs.get("trust_remote_code", False))
        if causal_lm and kind != "llm":
            raise UsageError(f"causal_lm=True scores with the LM head: it needs model_type='llm', not {kind!r}.")
        return RANKERS[kind].from_pretrained(path, **kwargs)


__all__ = [
    "AutoModelForRanking", "BaseRanker", "ColBERT", "ColBERTConfig", "CrossEncoder", "CrossEncoderConfig", "LLMRanker",
    "LLMRankerConfig", "RANKERS", "RankerConfig", "RankingOutput", "RerankResult", "infer_model_type", "maxsim",
    "normalize_model_type",
]
