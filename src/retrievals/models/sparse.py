"""Learned sparse embedders (SPLADE): a masked-LM head's vocabulary logits, pooled as max over tokens of
log(1 + relu(logit)), so each text is a weighted bag of vocabulary terms for an inverted index."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn
from transformers import AutoModelForMaskedLM

from ..inputs import as_texts, check_batch_size
from ..utils import UsageError
from .base import hf_config
from .embedding import AutoModelForEmbedding, EmbeddingConfig

SparseVector = Dict[int, float]  # token id -> weight (only non-zero weights)


@dataclass
class SparseConfig(EmbeddingConfig):
    """Settings of a sparse embedder; ``top_k`` > 0 keeps only the heaviest terms of each encoded text."""

    model_type: str = "sparse"
    pooling_method: str = "splade"
    normalize_embeddings: bool = False  # sparse scores are raw dot products
    top_k: int = 0


class SparseEmbedder(AutoModelForEmbedding):
    """SPLADE embedder: ``encode`` gives [n, vocab] tensors (mostly zeros), ``encode_sparse`` the
    ``{token id: weight}`` dicts an inverted index takes (:class:`retrievals.index.SparseIndex`); scores are dot
    products. Trained by ``retrievals.pipelines.embed --model_type sparse`` with the same data, InfoNCE on those dot
    products plus FLOPS regularisation (:class:`retrievals.losses.FlopsRegularizedLoss`). Loading, saving and the
    batched loop are the shared :class:`~retrievals.models.base.RetrievalModel`'s; not written as a
    sentence-transformers folder (its sparse layout is not produced yet)."""

    config_class = SparseConfig
    model_type = "sparse"

    def _check_config(self, config: SparseConfig) -> None:
        if config.pooling_method != "splade":
            raise UsageError(f"a sparse embedder pools with splade, not {config.pooling_method!r}.")
        if config.top_k < 0:
            raise UsageError(f"top_k must be >= 0, got {config.top_k}.")

    @classmethod
    def _default_config(cls, path: str, base_path: str, trust_remote_code: bool) -> SparseConfig:
        config = SparseConfig()
        limit = getattr(hf_config(base_path, trust_remote_code), "max_position_embeddings", None) or 512
        config.query_max_length = config.document_max_length = min(512, int(limit))
        return config

    @classmethod
    def _load_backbone(cls, path: str, config: Any, dtype: Optional[torch.dtype], trust_remote_code: bool) -> nn.Module:
        kwargs: Dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if dtype is not None:
            kwargs["dtype"] = dtype
        return AutoModelForMaskedLM.from_pretrained(path, **kwargs)

    def _save_extra(self, folder: Any, config: Any, lora: bool) -> None:
        """No sentence-transformers files: its sparse layout is not written yet."""

    @property
    def embedding_dim(self) -> int:
        return int(self.backbone.config.vocab_size)

    def _embed_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: Optional[bool],
                      pooling_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits = self.backbone(input_ids=input_ids, attention_mask=attention_mask).logits
        weights = torch.log1p(torch.relu(logits.float()))
        mask = (attention_mask if pooling_mask is None else pooling_mask).to(weights.dtype)
        return (weights * mask[..., None]).amax(dim=1)  # padding contributes 0, never the max of real tokens

    def encode_sparse(self, sentences: Union[str, Sequence[str]], is_query: bool = False, batch_size: int = 32,
                      top_k: Optional[int] = None) -> Union[SparseVector, List[SparseVector]]:
        """``{token id: weight}`` of each text (one dict for one string), the ``top_k`` heaviest terms when > 0."""
        texts, single = as_texts(sentences, "sentences")
        check_batch_size(batch_size)
        keep = self.retrieval_config.top_k if top_k is None else top_k
        dense = self.encode(texts, batch_size=batch_size, is_query=is_query, convert_to_tensor=True)
        out = [to_sparse(row, keep) for row in dense]
        return out[0] if single else out

    def decode(self, vector: SparseVector, top: int = 10) -> List[tuple]:
        """The ``top`` heaviest terms of a sparse vector as (token, weight): what the model expanded a text to."""
        best = sorted(vector.items(), key=lambda kv: -kv[1])[:top]
        return [(self.tokenizer.convert_ids_to_tokens(int(i)), w) for i, w in best]


def to_sparse(row: torch.Tensor, top_k: int = 0) -> SparseVector:
    nonzero = torch.nonzero(row > 0).flatten()
    values = row[nonzero]
    if top_k and len(nonzero) > top_k:
        best = torch.topk(values, top_k).indices
        nonzero, values = nonzero[best], values[best]
    return {int(i): float(v) for i, v in zip(nonzero.tolist(), values.tolist())}
