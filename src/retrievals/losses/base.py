"""The loss contract: a loss reads named fields of a model's output and owns its settings.

Each loss declares ``reads`` (the output fields it takes, by name, never by position) and ``Settings`` (a small
dataclass of its own settings). Settings a loss does not have are refused, not dropped; ``get_config_dict()``
describes the loss (it is written into every saved model's training record, ``retrievals_fingerprint.json``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn
from ..distributed import world
from ..utils import UsageError, finite_number


EMBEDDING_FIELDS = ("query_embeddings", "document_embeddings")  # what every embedder loss reads first
# [B * G] int64, one id per document row, equal for equal texts (:func:`retrievals.data.collator.hash_text_ids`): the
# softmax losses leave out a column holding another copy of a query's own positive (a false negative). Optional.
TEXT_IDS = "document_text_ids"


@dataclasses.dataclass
class NoSettings:
    pass


@dataclasses.dataclass
class ContrastiveSettings:
    """Settings of the softmax losses that can take in-batch and cross-device negatives."""

    temperature: float = 0.02
    use_inbatch_neg: bool = True
    negatives_cross_device: bool = False


class RetrievalLoss(nn.Module):
    name: ClassVar[str] = ""
    reads: ClassVar[Tuple[str, ...]] = ()
    # fields of ``reads`` a batch may lack (such as :data:`TEXT_IDS`): passed when given, else left to the default
    optional: ClassVar[Tuple[str, ...]] = ()
    Settings: ClassVar[Type[Any]] = NoSettings

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        known = {f.name for f in dataclasses.fields(self.Settings)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise UsageError(f"loss {self.name!r} has no setting {', '.join(unknown)}; its settings: {sorted(known) or 'none'}.")
        self.settings = self.Settings(**settings)
        for key, value in dataclasses.asdict(self.settings).items():
            setattr(self, key, value)
        self.check()

    def check(self) -> None:
        """Validate the settings: the shared ones here (a loss with others extends this)."""
        finite_number("temperature", getattr(self.settings, "temperature", 1.0), positive=True)
        for flag in ("use_inbatch_neg", "negatives_cross_device"):  # a string "false" would be true
            if not isinstance(getattr(self.settings, flag, False), bool):
                raise TypeError(f"{flag} must be True or False, got {type(getattr(self.settings, flag)).__name__}.")
        if getattr(self.settings, "negatives_cross_device", False) and not getattr(self.settings, "use_inbatch_neg", True):
            raise UsageError("negatives_cross_device shares in-batch negatives across processes: it needs use_inbatch_neg=True.")
        finite_number("margin", getattr(self.settings, "margin", 0.0))

    @classmethod
    def setting_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls.Settings))

    def get_config_dict(self) -> Dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.settings)}

    def inputs_from(self, outputs: Any, batch: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """The fields this loss reads, taken by name from a model output, else from ``batch`` (what the collator gave
        beside the model's inputs, such as a teacher's vectors); a missing one is named."""
        values = {}
        for field in self.reads:
            value = outputs.get(field) if isinstance(outputs, Mapping) else getattr(outputs, field, None)
            if value is None and batch is not None:
                value = batch.get(field)
            if value is None and field in self.optional:
                continue
            if value is None:
                raise UsageError(f"loss {self.name!r} reads {field!r}, which {type(outputs).__name__} does not give: "
                                 "this loss does not fit this model kind.")
            values[field] = value
        return values


class WrappingLoss(RetrievalLoss):
    """A loss around another (``self.loss``): FLOPS, Matryoshka. Its ``temperature`` is the wrapped loss's (an
    AttributeError when that has none, so ``getattr(loss, "temperature", default)`` sees through the wrapper): a
    teacher's KL term or Matryoshka's self-distillation scores the student at it."""

    loss: RetrievalLoss

    @property
    def temperature(self) -> float:
        try:
            return float(self.loss.temperature)
        except AttributeError:
            raise AttributeError(f"{self.loss.name!r} (wrapped by {self.name}) has no temperature") from None


def batch_log_softmax(queries: torch.Tensor, documents: torch.Tensor, temperature: float) -> torch.Tensor:
    """Each query's log-probabilities over every document of the batch (scores = dot products / ``temperature``, in
    float32): the distribution the distillation terms compare (Matryoshka's self-distillation, a teacher's)."""
    return F.log_softmax(queries.float() @ documents.float().T / temperature, dim=-1)


def groups(loss: str, queries: Any, documents: Any, dims: int = 2) -> Tuple[int, int]:
    """``(batch, group)`` of ``queries`` [B, ...] and their ``documents`` [B * G, ...] laid out query-major, each a
    tensor of ``dims`` dimensions: a missing input, an empty batch or documents that do not split into equal groups
    are named here rather than failing deep inside an einsum (or dividing by zero)."""
    for what, value in (("query", queries), ("document", documents)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"loss {loss!r}: {what} vectors must be a tensor, got {type(value).__name__}.")
        if value.dim() != dims:
            raise UsageError(f"loss {loss!r}: {what} vectors must have {dims} dimensions, got shape {tuple(value.shape)}.")
    batch, rows = queries.shape[0], documents.shape[0]
    if not batch or not rows:
        raise UsageError(f"loss {loss!r} got an empty batch ({batch} queries, {rows} documents).")
    if rows % batch:
        raise UsageError(f"{rows} documents do not split into groups for {batch} queries.")
    return batch, rows // batch


def check_text_ids(text_ids: Any, rows: int) -> torch.Tensor:
    """:data:`TEXT_IDS` of a batch of ``rows`` documents, checked: one integer per document row."""
    if not isinstance(text_ids, torch.Tensor) or text_ids.dim() != 1 or text_ids.dtype.is_floating_point:
        raise TypeError(f"{TEXT_IDS} must be a 1-D integer tensor (one id per document), got "
                        f"{getattr(text_ids, 'shape', type(text_ids).__name__)}.")
    if text_ids.shape[0] != rows:
        raise UsageError(f"{TEXT_IDS} has {text_ids.shape[0]} ids for {rows} documents.")
    return text_ids


def gather_text_ids(text_ids: torch.Tensor) -> torch.Tensor:
    """Every process's :data:`TEXT_IDS` in rank order, the layout :func:`retrievals.distributed.gather_with_grad`
    gives the documents (the same number of rows on each process); unchanged outside distributed runs. The ids are
    hashes of the texts, so they compare across processes; 8 bytes a document, no gradient."""
    _, size = world()
    if size == 1:
        return text_ids
    import torch.distributed as dist

    parts = [torch.empty_like(text_ids) for _ in range(size)]
    dist.all_gather(parts, text_ids.contiguous())
    return torch.cat(parts)


def mask_false_negatives(scores: torch.Tensor, text_ids: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """``scores`` [B, N] (query ``i``'s positive in column ``positives[i]``) with -inf wherever a column's text is the
    text of that query's positive but not the positive's own column: another query's copy of the same document (FAQ
    data where queries share an answer) or a hard negative equal to it. Scored as a negative, it would hold even a
    perfect embedder's loss at log 2; left out of the softmax, it is neither a negative nor a second target."""
    same = text_ids[None, :] == text_ids[positives][:, None]
    same[torch.arange(positives.shape[0], device=same.device), positives] = False
    return scores.masked_fill(same, float("-inf"))


def mask_group_copies(scores: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
    """:func:`mask_false_negatives` for scores of each query's own group only ([B, G], positive first)."""
    ids = text_ids.view(scores.shape)
    same = ids == ids[:, :1]
    same[:, 0] = False
    return scores.masked_fill(same, float("-inf"))


def check_scores(loss: str, scores: Any, targets: Any) -> None:
    """A reranker loss's inputs: ``scores`` [B, C] and ``targets`` [B] (each query's positive column), named when
    they are not (a 1-D score vector failed with a bare IndexError). Target values are not read here: that would
    wait for the GPU every step."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise UsageError(f"loss {loss!r}: scores must be a [queries, candidates] tensor, got "
                         f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}.")
    if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != (scores.shape[0],):
        raise UsageError(f"loss {loss!r}: targets must be a [{scores.shape[0]}] tensor (each query's positive column), got "
                         f"{tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__}.")
