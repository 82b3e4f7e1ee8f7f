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
from ..utils import UsageError


EMBEDDING_FIELDS = ("query_embeddings", "document_embeddings")  # what every embedder loss reads first


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
        temperature = getattr(self.settings, "temperature", 1.0)
        if not 0 < temperature < float("inf"):
            raise UsageError(f"temperature must be > 0 and finite, got {temperature}.")
        if getattr(self.settings, "negatives_cross_device", False) and not getattr(self.settings, "use_inbatch_neg", True):
            raise UsageError("negatives_cross_device shares in-batch negatives across processes: it needs use_inbatch_neg=True.")
        margin = getattr(self.settings, "margin", 0.0)
        if not margin >= 0:
            raise UsageError(f"margin must be >= 0, got {margin}.")

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
            if value is None:
                raise UsageError(f"loss {self.name!r} reads {field!r}, which {type(outputs).__name__} does not give: "
                                 "this loss does not fit this model kind.")
            values[field] = value
        return values


def batch_log_softmax(queries: torch.Tensor, documents: torch.Tensor, temperature: float) -> torch.Tensor:
    """Each query's log-probabilities over every document of the batch (scores = dot products / ``temperature``, in
    float32): the distribution the distillation terms compare (Matryoshka's self-distillation, a teacher's)."""
    return F.log_softmax(queries.float() @ documents.float().T / temperature, dim=-1)
