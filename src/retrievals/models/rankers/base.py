"""What every reranker shares: config, result type, loading/saving, windowed batched scoring."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from transformers.utils import ModelOutput

from ...inputs import as_pairs, as_texts, check_batch_size, check_flags, check_top_k
from ...utils import UsageError, apply_instruction, logger
from ..base import ModelConfig, RetrievalModel, hf_config, usable_positions
from ..processing import tokenize_user_text


Pair = Tuple[str, str]
Batch = Dict[str, torch.Tensor]
TRAIN_CHUNK = 16  # training batches run as length-sorted chunks of this many inputs (less padding)


class QueryCutter:
    """A processor's queries with their instruction applied, cut to a token budget on a token boundary *before* the
    instruction is applied (a template's text after ``{}`` is kept), and refused when the instruction leaves no room
    (every query would score as the same text). Needs ``self.tokenizer`` and ``self.config.query_instruction``."""

    tokenizer: Any
    config: Any

    def _cut_queries(self, queries: Sequence[str], cap: int, cap_is: str) -> Dict[str, str]:
        """Each distinct query with its instruction applied, in at most ``cap`` tokens (special tokens not counted;
        ``cap_is`` says where ``cap`` comes from, for the error)."""
        used = len(self._instruction_ids())
        if used >= cap:
            raise UsageError(f"the query instruction {self.config.query_instruction[:60]!r} takes {used} tokens, and a "
                             f"query gets {cap} ({cap_is}): no room for the query. Raise it, or shorten the instruction.")
        instruction, tok = self.config.query_instruction, self.tokenizer
        distinct = list(dict.fromkeys(queries))
        whole = {q: apply_instruction(instruction, q) for q in distinct}
        lengths = tokenize_user_text(tok, list(whole.values()), add_special_tokens=False)["input_ids"] if distinct else []
        long = [q for q, ids in zip(distinct, lengths) if len(ids) > cap]
        if long:
            enc = tokenize_user_text(tok, long, add_special_tokens=False, truncation=True, max_length=cap - used,
                                     return_offsets_mapping=True)
            for q, offsets in zip(long, enc["offset_mapping"]):
                whole[q] = apply_instruction(instruction, q[: offsets[-1][1]] if offsets else "")
        return whole

    def _instruction_ids(self) -> List[int]:
        """The query instruction's own tokens (a template's head and tail), counted once per instruction."""
        instruction = self.config.query_instruction or ""
        cached = getattr(self, "_instruction", None)  # (instruction, ids): one attribute, so threads see a whole pair
        if cached is None or cached[0] != instruction:
            text = apply_instruction(instruction, "") if instruction else ""
            cached = (instruction, tokenize_user_text(self.tokenizer, [text], add_special_tokens=False)["input_ids"][0] if text else [])
            self._instruction = cached
        return cached[1]


@dataclass
class RankerConfig(ModelConfig):
    """Settings every reranker persists in ``retrievals_config.json``.

    ``max_length`` is the longest input the model sees: the whole (query, document) pair for
    cross-encoders and LLM rerankers, the document for ColBERT. Longer documents are split into
    windows of that size overlapping by ``window_overlap`` tokens and scored by their best window
    (``score_windows=False``: first window only, as in training).
    """

    model_type: str = ""
    query_instruction: str = ""
    document_instruction: str = ""
    query_max_length: int = 64
    max_length: int = 512
    window_overlap: int = 32
    score_windows: bool = True


@dataclass
class RerankResult:
    """One reranked document: its position in the input list, the text, the score and its rank (0 = best)."""

    index: int
    document: str
    score: float
    rank: int


@dataclass
class RankingOutput(ModelOutput):
    """Training output: ``scores`` [queries, candidates] and the column of each query's positive."""

    scores: Optional[torch.Tensor] = None
    targets: Optional[torch.Tensor] = None


class BaseRanker(RetrievalModel):
    """A reranker: subclasses set ``config_class``/``model_type``, load their backbone and turn a
    (query, document) pair into scoring units (one per document window).

    Loading, saving and resuming come from :class:`~retrievals.models.base.RetrievalModel`. Subclass contract:

    * ``_load_backbone(path, config, dtype, trust_remote_code)`` -> the transformer,
    * ``processor``: builds each pair's units with ``units(pairs, all_windows)`` and batches them with
      ``collate_units(units)``; as a data collator it turns ``[{"query", "documents"}]`` into the
      keyword arguments of ``forward``,
    * ``score_units(batch)`` -> one score per unit (the same function training uses),
    * ``forward(**training_batch)`` -> :class:`RankingOutput`.
    """

    config_class: ClassVar[Type[RankerConfig]] = RankerConfig
    internal_fields = frozenset({"lora_base", "model_type"})
    default_temperature: ClassVar[float] = 1.0  # of the training loss, for raw logits
    loss_family: ClassVar[str] = "ranking"  # which losses fit this kind's output (retrievals.losses.LOSS_FAMILIES)

    @classmethod
    def _default_config(cls, path: str, base_path: str, trust_remote_code: bool) -> RankerConfig:
        config = cls.config_class(model_type=cls.model_type)
        limit = usable_positions(hf_config(base_path, trust_remote_code)) or 512
        config.max_length = min(config.max_length, int(limit))
        return config

    # ------------------------------------------------------------------ scoring
    @abstractmethod
    def score_units(self, batch: Batch) -> torch.Tensor:
        """One score per input unit of a padded batch (used by training and inference alike)."""

    def _postprocess(self, scores: torch.Tensor) -> torch.Tensor:
        """Map raw scores to [0, 1] for ``normalize=True`` (sigmoid unless a subclass knows better)."""
        return torch.sigmoid(scores)

    @torch.inference_mode()
    def compute_score(
        self,
        pairs: Union[Pair, Sequence[Pair]],
        batch_size: int = 32,
        normalize: bool = False,
        show_progress_bar: Optional[bool] = None,
    ) -> Union[float, List[float]]:
        """Score (query, document) pairs; one pair gives a float, a list gives a list in input order.

        Inputs are batched by length with dynamic padding; a document longer than ``max_length``
        gets the score of its best window. Scores do not depend on the batch a pair lands in, nor on
        other threads scoring at the same time. An empty list gives ``[]``.
        """
        items, single = as_pairs(pairs)
        check_batch_size(batch_size)
        check_flags(normalize=normalize, show_progress_bar=show_progress_bar)
        if not items:
            return []
        owners, units = self.pair_units(items)
        if show_progress_bar is None:
            show_progress_bar = len(units) > 10 * batch_size and logger.getEffectiveLevel() <= 20
        unit_scores = self.score_unit_list(units, batch_size, show_progress_bar)
        scores = self.pair_scores(owners, unit_scores, len(items), normalize)
        return scores[0] if single else scores

    def check_takes_text(self) -> None:
        self.pair_units([("a", "a")])

    def pair_units(self, pairs: Sequence[Pair]) -> Tuple[List[int], List[Any]]:
        """The scoring units of ``pairs`` (one per document window) and the pair each belongs to. With
        :meth:`score_unit_list` and :meth:`pair_scores` this is :meth:`compute_score` in three steps, for
        callers that schedule units themselves (the server batches units of many requests by token budget)."""
        per_pair = self.processor.units(list(pairs), self.retrieval_config.score_windows)
        owners = [i for i, pair_units in enumerate(per_pair) for _ in pair_units]
        return owners, [unit for pair_units in per_pair for unit in pair_units]

    def unit_tokens(self, unit: Any) -> int:
        """Tokens of one unit (its cost in a token-budgeted batch)."""
        return int(self.processor.unit_length(unit))

    @torch.inference_mode()
    def score_unit_list(self, units: Sequence[Any], batch_size: int = 32, show_progress_bar: bool = False,
                        max_tokens: Optional[int] = None) -> torch.Tensor:
        """Raw float32 score of each unit, in input order; batched by length (at most ``batch_size`` units and,
        when given, ``max_tokens`` padded tokens a batch), each batch padded to its longest."""
        return self.run_batches([self.processor.unit_length(u) for u in units],
                                lambda idx: self.processor.collate_units([units[k] for k in idx]), self.score_units,
                                torch.empty(len(units), dtype=torch.float32), batch_size, max_tokens, "Scoring",
                                show_progress_bar)

    def pair_scores(self, owners: Sequence[int], unit_scores: Any, n_pairs: int, normalize: bool = False) -> List[float]:
        """Each pair's score: the best of its units' (a long document scores by its best window)."""
        owner_index = torch.as_tensor(list(owners), dtype=torch.long)
        values = torch.as_tensor(unit_scores, dtype=torch.float32)
        scores = torch.full((n_pairs,), float("-inf")).scatter_reduce(0, owner_index, values, reduce="amax")
        if normalize:
            scores = self._postprocess(scores)
        return scores.tolist()

    def rerank(
        self,
        query: str,
        documents: Union[str, Dict[str, str], Sequence[Any]],
        top_k: Optional[int] = None,
        batch_size: int = 32,
        normalize: bool = False,
    ) -> List[RerankResult]:
        """Score ``documents`` against ``query`` and return the best ``top_k`` (all when None), best first.

        Documents are strings or BEIR dicts (``title`` and ``text``, scored and returned as ``"title text"``);
        one string or one dict is one document. ``top_k=0`` gives ``[]``.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        documents, _ = as_texts(documents, "documents", documents=True)
        top_k = check_top_k(top_k, allow_none=True)
        check_batch_size(batch_size)
        check_flags(normalize=normalize)
        if not documents or top_k == 0:
            return []
        raw = self.compute_score([(query, d) for d in documents], batch_size=batch_size)
        order = rank_order(raw, top_k)
        scores = self._postprocess(torch.tensor(raw, dtype=torch.float32)).tolist() if normalize else raw
        return [RerankResult(index=i, document=documents[i], score=scores[i], rank=r) for r, i in enumerate(order)]


def rank_order(raw_scores: Sequence[float], top_k: Optional[int] = None) -> List[int]:
    """Indexes of the best ``top_k`` scores (all when None), best first, equal scores in input order. Ranks by the
    raw scores: float32's sigmoid is exactly 1.0 above about 17, so ranking by normalized scores put an LLM
    reranker's strong documents (its raw "Yes" logits) in the order they were sent."""
    return sorted(range(len(raw_scores)), key=lambda i: (-raw_scores[i], i))[:top_k]


def group_targets(batch: int, device: torch.device) -> torch.Tensor:
    """Targets when each query is scored against its own group only: the positive is column 0."""
    return torch.zeros(batch, dtype=torch.long, device=device)


def windows(ids: Sequence[int], size: int, overlap: int, all_windows: bool) -> List[List[int]]:
    """Split ``ids`` into windows of ``size`` tokens, consecutive ones sharing ``overlap`` tokens."""
    ids = list(ids)
    if size < 1:
        raise UsageError(f"no room left for the document (window size {size}): raise max_length.")
    if len(ids) <= size or not all_windows:
        return [ids[:size]]
    step = max(1, size - min(overlap, size // 2))
    out = []
    for start in range(0, len(ids), step):
        out.append(ids[start : start + size])
        if start + size >= len(ids):
            break
    return out
