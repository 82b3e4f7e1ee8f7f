"""Cross-encoder reranker: the (query, document) pair through one encoder, one relevance logit."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from ...utils import UsageError, apply_instruction, logger
from ..base import hf_config
from ..processing import PaddingOptions, at_least_one_token, pad_ids, run_in_length_chunks, tokenize_user_text
from .base import TRAIN_CHUNK, BaseRanker, Batch, QueryCutter, RankerConfig, RankingOutput, group_targets


@dataclass
class CrossEncoderConfig(RankerConfig):
    """By default the query is only capped at half of ``max_length`` (as sentence-transformers' truncation does
    for short queries and long documents)."""

    model_type: str = "cross-encoder"
    query_max_length: int = 512


class PairProcessor(QueryCutter, PaddingOptions):
    """Tokenizes (query, document) pairs: the query (with instruction) capped at ``query_max_length``
    and at half of ``max_length``, the document truncated, or split into overlapping windows, to fit.
    Each list of pairs is tokenized in two batched calls (distinct queries, then the pairs)."""

    def __init__(self, tokenizer: Any, config: CrossEncoderConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.n_special = tokenizer.num_special_tokens_to_add(pair=True)
        self.use_types = "token_type_ids" in tokenizer.model_input_names

    def units(self, pairs: Sequence[Tuple[str, str]], all_windows: bool) -> List[List[Dict[str, Any]]]:
        """The scoring units of each pair: its first window, or all of them."""
        if not pairs:
            return []
        cfg, tok = self.config, self.tokenizer
        room = cfg.max_length - self.n_special
        q_cap = min(cfg.query_max_length, max(1, room // 2))  # the document keeps at least half
        if room - q_cap < 1:
            raise UsageError(f"max_length={cfg.max_length} leaves no room for the document: raise it or lower query_max_length.")
        cut = self._cut_queries([q for q, _ in pairs], q_cap, "query_max_length, at most half of max_length")
        queries = [cut[q] for q, _ in pairs]
        documents = [apply_instruction(cfg.document_instruction, d) for _, d in pairs]
        enc = tokenize_user_text(tok, queries, documents, truncation="only_second", max_length=cfg.max_length,
                  stride=min(cfg.window_overlap, (room - q_cap) // 2), return_overflowing_tokens=all_windows, verbose=False)
        owners = enc["overflow_to_sample_mapping"] if all_windows else range(len(pairs))
        out: List[List[Dict[str, Any]]] = [[] for _ in pairs]
        filled = at_least_one_token([list(x) for x in enc["input_ids"]], tok)  # ("", "") with no special tokens
        for k, owner in enumerate(owners):
            types = (enc["token_type_ids"][k] or [0]) if self.use_types else None
            out[owner].append({"input_ids": filled[k], "token_type_ids": types})
        return out

    @staticmethod
    def unit_length(unit: Dict[str, List[int]]) -> int:
        return len(unit["input_ids"])

    def collate_units(self, units: Sequence[Dict[str, List[int]]]) -> Batch:
        types = [u["token_type_ids"] for u in units] if self.use_types else None
        return pad_ids([u["input_ids"] for u in units], self.tokenizer.pad_token_id, token_type_ids=types,
                       multiple_of=self.pad_to_multiple_of)

    def __call__(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Training batch: every (query, document) of every group, query-major, first window only."""
        units = self.units([(item["query"], doc) for item in items for doc in item["documents"]], False)
        return {"pairs": self.collate_units([u[0] for u in units]), "group_size": len(items[0]["documents"])}


class CrossEncoder(BaseRanker):
    """Encoder with a sequence-classification head of exactly one logit: the relevance score.

    A base encoder (or a checkpoint with a head of another size) gets a fresh 1-logit head.
    Train with ``loss_fn=ce`` (softmax over each query's [positive, negatives]) or ``bce``.
    """

    config_class = CrossEncoderConfig
    model_type = "cross-encoder"
    lora_task_type = "SEQ_CLS"
    backend_output = "logits"

    def _make_processor(self) -> PairProcessor:
        self.tokenizer.padding_side = "right"
        if self.backbone.config.pad_token_id is None:  # decoder backbones find the last token through the pad id
            self.backbone.config.pad_token_id = self.tokenizer.pad_token_id
        return PairProcessor(self.tokenizer, self.retrieval_config)

    @classmethod
    def _load_backbone(cls, path: str, config: RankerConfig, dtype: Optional[torch.dtype], trust_remote_code: bool) -> nn.Module:
        hf = hf_config(path, trust_remote_code)
        has_head = any(a.endswith("ForSequenceClassification") for a in (getattr(hf, "architectures", None) or []))
        kwargs: Dict[str, Any] = {"trust_remote_code": trust_remote_code, "num_labels": 1}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if has_head and hf.num_labels != 1:
            logger.warning("%s has a %d-label head; a reranker scores with one logit: using a fresh 1-logit head.", path, hf.num_labels)
            kwargs["ignore_mismatched_sizes"] = True
        elif not has_head:
            logger.info("%s has no classification head: adding a fresh 1-logit head (train it before use).", path)
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)

    def _tokenizer_for_saving(self, config: Any) -> Any:
        """The tokenizer with ``model_max_length`` = ``max_length``: sentence-transformers' ``CrossEncoder`` truncates
        there, so a saved folder scores a long document alike in both libraries (``score_windows=False``; windows
        and instructions are this library's)."""
        if self.tokenizer.model_max_length == config.max_length:
            return self.tokenizer
        tokenizer = copy.deepcopy(self.tokenizer)
        tokenizer.model_max_length = config.max_length
        return tokenizer

    def backend_inputs(self) -> List[str]:
        return ["input_ids", "attention_mask"] + (["token_type_ids"] if self.processor.use_types else [])

    def score_units(self, batch: Batch) -> torch.Tensor:
        return self.run_backbone(**batch).logits[:, 0]

    def forward(self, pairs: Batch, group_size: int) -> RankingOutput:
        scores = run_in_length_chunks(self.score_units, pairs, TRAIN_CHUNK).view(-1, group_size)
        return RankingOutput(scores=scores, targets=group_targets(scores.shape[0], scores.device))
