"""LLM reranker: a decoder LM reads a prompt with the query and document; score = the "Yes" logit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ...utils import UsageError, logger
from ..base import load_backbone
from ..processing import PaddingOptions, call_tokenizer, pad_ids, run_in_length_chunks, tokenize_user_text
from .base import TRAIN_CHUNK, BaseRanker, Batch, RankerConfig, RankingOutput, group_targets, windows

DEFAULT_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'."
)
SCORE_MODES = ("yes", "yes_minus_no")


@dataclass
class LLMRankerConfig(RankerConfig):
    """The prompt is ``[BOS] query_instruction(query) separator document_instruction(doc) separator task_prompt``;
    the score is the logit of ``target_token`` there (``score_mode="yes_minus_no"``: minus ``negative_token``'s).
    Instructions are prefixes or ``{}`` templates; their tokens and the prompt are never truncated."""

    model_type: str = "llm"
    query_instruction: str = "A: "
    document_instruction: str = "B: "
    task_prompt: str = DEFAULT_PROMPT
    separator: str = "\n"
    target_token: str = "Yes"
    negative_token: str = "No"
    score_mode: str = "yes"
    query_max_length: int = 128


class PromptProcessor(PaddingOptions):
    """Builds prompt token ids piece by piece, so truncation and windows cut only the query and document text."""

    def __init__(self, tokenizer: Any, config: LLMRankerConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        probe = call_tokenizer(tokenizer, "a")["input_ids"]
        bos = tokenizer.bos_token_id
        self.bos = [bos] if bos is not None and probe and probe[0] == bos else []
        self.sep = self._ids(config.separator)
        self.suffix = self.sep + self._ids(config.task_prompt) if config.task_prompt else []
        self.query_parts = self._parts(config.query_instruction)
        self.document_parts = self._parts(config.document_instruction)

    def _ids(self, text: str) -> List[int]:
        return call_tokenizer(self.tokenizer, text, add_special_tokens=False, verbose=False)["input_ids"] if text else []

    def _parts(self, instruction: str) -> Tuple[List[int], List[int]]:
        head, _, tail = instruction.partition("{}") if "{}" in instruction else (instruction, "", "")
        return self._ids(head), self._ids(tail)

    def _ids_many(self, texts: Sequence[str]) -> List[List[int]]:
        return tokenize_user_text(self.tokenizer, list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []

    def units(self, pairs: Sequence[Tuple[str, str]], all_windows: bool) -> List[List[List[int]]]:
        """The prompt token ids of each pair, one per document window (only the first unless ``all_windows``).
        Distinct queries and the documents are tokenized in one batched call each."""
        cfg = self.config
        (qh, qt), (dh, dt) = self.query_parts, self.document_parts
        tail = dt + self.suffix
        fixed = len(self.bos) + len(qh) + len(qt) + len(self.sep) + len(dh) + len(tail)
        q_cap = max(0, min(cfg.query_max_length - len(qh) - len(qt), (cfg.max_length - fixed) // 2))  # the document keeps half
        # every query would be cut to nothing, one score for all (no room at all: the document's message below)
        if q_cap < 1 and pairs and cfg.max_length > fixed:
            raise UsageError(
                f"no room for the query: the query instruction takes {len(qh) + len(qt)} of query_max_length="
                f"{cfg.query_max_length} tokens, and the prompt {fixed} of max_length={cfg.max_length} (half of the rest "
                "goes to the query). Raise query_max_length or max_length, or shorten the instructions.")
        distinct = list(dict.fromkeys(q for q, _ in pairs))
        q_ids = dict(zip(distinct, self._ids_many(distinct)))
        out = []
        for (query, _), doc_ids in zip(pairs, self._ids_many([d for _, d in pairs])):
            head = self.bos + qh + q_ids[query][:q_cap] + qt + self.sep + dh
            room = cfg.max_length - len(head) - len(tail)
            if room < 1:
                raise UsageError(
                    f"max_length={cfg.max_length} leaves no room for the document after the prompt "
                    f"({len(head) + len(tail)} tokens): raise max_length or lower query_max_length."
                )
            out.append([head + w + tail for w in windows(doc_ids, room, cfg.window_overlap, all_windows)])
        return out

    @staticmethod
    def unit_length(unit: Sequence[int]) -> int:
        return len(unit)

    def collate_units(self, units: Sequence[Sequence[int]]) -> Batch:
        return pad_ids(units, self.tokenizer.pad_token_id, left=True, multiple_of=self.pad_to_multiple_of)

    def __call__(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Training batch: every (query, document) prompt of every group, query-major, first window only."""
        units = self.units([(item["query"], doc) for item in items for doc in item["documents"]], False)
        return {"pairs": self.collate_units([u[0] for u in units]), "group_size": len(items[0]["documents"])}


class LLMRanker(BaseRanker):
    """Decoder LM reranker scored by the target token's logit at the last real token (any padding side).

    Training (``forward``), evaluation and inference (``compute_score``) all call :meth:`score_units`.
    """

    config_class = LLMRankerConfig
    model_type = "llm"
    lora_task_type = "CAUSAL_LM"

    def __init__(self, backbone: nn.Module, tokenizer: Any, config: LLMRankerConfig) -> None:
        if config.score_mode not in SCORE_MODES:
            raise UsageError(f"Unknown score_mode {config.score_mode!r}; choose one of {list(SCORE_MODES)}.")
        super().__init__(backbone, tokenizer, config)
        self.target_id = self._token_id(config.target_token)
        self.negative_id = self._token_id(config.negative_token)
        if config.score_mode == "yes_minus_no" and self.target_id == self.negative_id:  # every score was 0
            raise UsageError(f"score_mode='yes_minus_no' with target_token {config.target_token!r} and negative_token "
                             f"{config.negative_token!r}: both score with token id {self.target_id}, so every score is 0.")

    def _token_id(self, token: str) -> int:
        ids = call_tokenizer(self.tokenizer, token, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UsageError(f"target token {token!r} is empty for this tokenizer.")
        if len(ids) > 1:
            logger.warning("%r is %d tokens for this tokenizer; scoring with its first token.", token, len(ids))
        return int(ids[0])

    def _make_processor(self) -> PromptProcessor:
        return PromptProcessor(self.tokenizer, self.retrieval_config)

    @classmethod
    def _load_backbone(cls, path: str, config: RankerConfig, dtype: Optional[torch.dtype], trust_remote_code: bool) -> nn.Module:
        return load_backbone(path, causal_lm=True, dtype=dtype, trust_remote_code=trust_remote_code)

    def score_units(self, batch: Batch) -> torch.Tensor:
        ids, mask = _end_aligned(batch["input_ids"], batch["attention_mask"])
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        # every row now ends in its last real token: only that column's logits are computed
        logits = self.run_backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=1).logits[:, -1]
        score = logits[:, self.target_id].float()
        if self.retrieval_config.score_mode == "yes_minus_no":
            score = score - logits[:, self.negative_id].float()
        return score

    def pads_left(self) -> bool:
        return True  # score_units end-aligns every row, whatever the tokenizer's side

    def forward(self, pairs: Batch, group_size: int) -> RankingOutput:
        scores = run_in_length_chunks(self.score_units, pairs, TRAIN_CHUNK, left=self.pads_left()).view(-1, group_size)
        return RankingOutput(scores=scores, targets=group_targets(scores.shape[0], scores.device))


def _end_aligned(ids: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate each row so that its last real token is in the last column (left padding), whatever the
    padding side; left-padded rows are unchanged. No data-dependent branch: compiles as one graph."""
    width = mask.shape[1]
    last = width - 1 - mask.flip(-1).argmax(-1)  # column of each row's last real token
    index = (torch.arange(width, device=mask.device) - (width - 1 - last)[:, None]) % width
    return ids.gather(1, index), mask.gather(1, index)
