"""What every reranker shares: config, result type, loading/saving, windowed batched scoring."""

from __future__ import annotations

import copy
import dataclasses
import os
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.utils import ModelOutput

from ...utils import logger, resolve_device, resolve_dtype
from ...files import atomic_directory
from ..base import (
    CheckpointingMixin,
    ModelConfig,
    check_model_path,
    record_lora_base,
    attach_lora,
    has_tokenizer,
    hf_config,
    is_peft_model,
    load_backbone_weights,
    load_tokenizer,
    resolve_lora_paths,
)
from ...inputs import as_pairs, as_texts, check_batch_size, check_top_k
from ..processing import eval_mode, length_batches

Pair = Tuple[str, str]
Batch = Dict[str, torch.Tensor]
TRAIN_CHUNK = 16  # training batches run as length-sorted chunks of this many inputs (less padding)


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


class BaseRanker(CheckpointingMixin, nn.Module, metaclass=ABCMeta):
    """A reranker: subclasses set ``config_class``/``model_type``, load their backbone and turn a
    (query, document) pair into scoring units (one per document window).

    Subclass contract:

    * ``_load_backbone(path, config, dtype, trust_remote_code)`` -> the transformer,
    * ``processor``: builds each pair's units with ``units(pairs, all_windows)`` and batches them with
      ``collate_units(units)``; as a data collator it turns ``[{"query", "documents"}]`` into the
      keyword arguments of ``forward``,
    * ``score_units(batch)`` -> one score per unit (the same function training uses),
    * ``forward(**training_batch)`` -> :class:`RankingOutput`.
    """

    config_class: ClassVar[Type[RankerConfig]] = RankerConfig
    model_type: ClassVar[str] = ""
    lora_task_type: ClassVar[str] = "FEATURE_EXTRACTION"

    def __init__(self, backbone: nn.Module, tokenizer: Any, config: RankerConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.retrieval_config = config
        self.config = getattr(backbone, "config", None)  # what transformers' Trainer looks for
        self.processor = self._make_processor()

    # ------------------------------------------------------------------ building
    @abstractmethod
    def _make_processor(self) -> Any:
        """The processor that builds and batches this model's inputs."""

    @classmethod
    @abstractmethod
    def _load_backbone(cls, path: str, config: RankerConfig, dtype: Optional[torch.dtype], trust_remote_code: bool) -> nn.Module:
        """The transformer this kind of reranker runs."""

    @classmethod
    def _default_config(cls, path: str, trust_remote_code: bool) -> RankerConfig:
        config = cls.config_class(model_type=cls.model_type)
        limit = getattr(hf_config(path, trust_remote_code), "max_position_embeddings", None) or 512
        config.max_length = min(config.max_length, int(limit))
        return config

    def _load_extra(self, path: str, fresh: bool) -> None:
        """Load weights kept outside the backbone (ColBERT's projection)."""

    def _save_extra(self, path: Path) -> None:
        """Save weights kept outside the backbone."""

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        use_lora: bool = False,
        lora_path: Optional[str] = None,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        lora_target_modules: Optional[List[str]] = None,
        tokenizer_name: Optional[str] = None,
        dtype: Optional[Union[str, torch.dtype]] = None,
        device: Optional[Union[str, torch.device]] = None,
        trust_remote_code: bool = False,
        **settings: Any,
    ) -> "BaseRanker":
        """Load a reranker saved by this library, a plain transformers model or a LoRA adapter folder.

        ``settings`` are config fields (``max_length``, ``query_instruction``, ``task_prompt``,
        ``colbert_dim`` ...); those left as None come from the saved config, else from defaults.
        """
        names = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = set(settings) - names
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained() got unexpected arguments {sorted(unknown)}; known: {sorted(names)}")
        path = check_model_path(model_name_or_path)
        if lora_path:
            lora_path = check_model_path(lora_path, "LoRA adapter")
        if tokenizer_name and os.path.exists(tokenizer_name):
            tokenizer_name = check_model_path(tokenizer_name, "tokenizer")
        config = cls.config_class.load(path) if os.path.isdir(path) else None
        if config is not None and config.model_type != cls.model_type:
            raise ValueError(f"{path} holds a {config.model_type!r} model, not {cls.model_type!r}.")
        saved_by_us = config is not None
        base_path, adapter_path = resolve_lora_paths(path, config.lora_base if config else None, lora_path)
        if config is None:
            config = cls._default_config(base_path, trust_remote_code)
        config.update(**settings)
        tokenizer_path = tokenizer_name or (path if has_tokenizer(path) else base_path)
        tokenizer = load_tokenizer(tokenizer_path, trust_remote_code=trust_remote_code)
        device_ = resolve_device(device)
        backbone = cls._load_backbone(base_path, config, resolve_dtype(dtype, device_), trust_remote_code)
        backbone = attach_lora(backbone, config, base_path, adapter_path, use_lora, lora_r, lora_alpha, lora_dropout,
                               lora_target_modules, task_type=cls.lora_task_type)
        model = cls(backbone, tokenizer, config)
        model._load_extra(path, fresh=not saved_by_us)
        return model.to(device_).eval()  # as transformers does; training switches modes itself

    def save_pretrained(self, path: str | os.PathLike, merge_lora: bool = False) -> None:
        """Save weights (or the LoRA adapter), tokenizer and ``retrievals_config.json``, atomically.

        With a LoRA model, ``merge_lora=True`` writes a full merged model instead of the adapter.
        """
        config = copy.deepcopy(self.retrieval_config)
        backbone = self.backbone
        lora = is_peft_model(backbone)
        if lora and merge_lora:
            backbone = copy.deepcopy(backbone).merge_and_unload()
            lora = False
        with atomic_directory(path) as scratch:
            backbone.save_pretrained(scratch)
            self.tokenizer.save_pretrained(scratch)
            self._save_extra(scratch)
            if lora:
                record_lora_base(scratch, config.lora_base)
            else:
                config.lora_base = None
            config.save(scratch)

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load weights saved by :meth:`save_pretrained` (resuming a training checkpoint)."""
        load_backbone_weights(self.backbone, path)
        self._load_extra(str(path), fresh=False)

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
        if not items:
            return []
        owners, units = self.pair_units(items)
        if show_progress_bar is None:
            show_progress_bar = len(units) > 10 * batch_size and logger.getEffectiveLevel() <= 20
        unit_scores = self.score_unit_list(units, batch_size, show_progress_bar)
        scores = self.pair_scores(owners, unit_scores, len(items), normalize)
        return scores[0] if single else scores

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
        unit_scores = torch.empty(len(units), dtype=torch.float32)
        dev = self.device
        lengths = [self.processor.unit_length(u) for u in units]
        with eval_mode(self):
            for idx in tqdm(length_batches(lengths, batch_size, max_tokens), desc="Scoring", disable=not show_progress_bar):
                batch = self.processor.collate_units([units[k] for k in idx])
                batch = {k: v.to(dev) for k, v in batch.items()}
                unit_scores[idx] = self.score_units(batch).float().cpu()
        return unit_scores

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
        if not documents or top_k == 0:
            return []
        scores = self.compute_score([(query, d) for d in documents], batch_size=batch_size, normalize=normalize)
        order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))[:top_k]
        return [RerankResult(index=i, document=documents[i], score=scores[i], rank=r) for r, i in enumerate(order)]

    def __repr__(self) -> str:
        fields = {f.name: getattr(self.retrieval_config, f.name) for f in dataclasses.fields(self.retrieval_config)}
        return f"{type(self).__name__}({type(self.backbone).__name__}, {fields})"


def group_targets(batch: int, device: torch.device) -> torch.Tensor:
    """Targets when each query is scored against its own group only: the positive is column 0."""
    return torch.zeros(batch, dtype=torch.long, device=device)


def windows(ids: Sequence[int], size: int, overlap: int, all_windows: bool) -> List[List[int]]:
    """Split ``ids`` into windows of ``size`` tokens, consecutive ones sharing ``overlap`` tokens."""
    ids = list(ids)
    if size < 1:
        raise ValueError(f"no room left for the document (window size {size}): raise max_length.")
    if len(ids) <= size or not all_windows:
        return [ids[:size]]
    step = max(1, size - min(overlap, size // 2))
    out = []
    for start in range(0, len(ids), step):
        out.append(ids[start : start + size])
        if start + size >= len(ids):
            break
    return out
