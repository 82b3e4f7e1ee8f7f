"""Training losses, one ``nn.Module`` per file, looked up by name with :func:`get_loss`."""

from __future__ import annotations

from typing import Any, Dict, Type

from .base import RetrievalLoss
from .flops import FlopsRegularizedLoss
from .infonce import InfoNCELoss
from .listwise_ce import ListwiseCrossEntropyLoss
from .matryoshka import MatryoshkaLoss
from .maxsim_ce import MaxSimCrossEntropyLoss
from .pointwise_bce import PointwiseBCELoss
from .teacher_distill import TeacherDistillLoss
from .triplet import TripletMarginLoss
from ..utils import UsageError

EMBEDDING_LOSSES: Dict[str, Type[RetrievalLoss]] = {"infonce": InfoNCELoss, "triplet": TripletMarginLoss}
RANKING_LOSSES: Dict[str, Type[RetrievalLoss]] = {"ce": ListwiseCrossEntropyLoss, "bce": PointwiseBCELoss}
LATE_INTERACTION_LOSSES: Dict[str, Type[RetrievalLoss]] = {"ce": MaxSimCrossEntropyLoss, "bce": PointwiseBCELoss}
# which losses fit which model output: a reranker kind names its family (``loss_family``), the embedder is "embedding"
LOSS_FAMILIES: Dict[str, Dict[str, Type[RetrievalLoss]]] = {
    "embedding": EMBEDDING_LOSSES, "ranking": RANKING_LOSSES, "late_interaction": LATE_INTERACTION_LOSSES,
}


def loss_class(name: str, registry: Dict[str, Type[RetrievalLoss]] = EMBEDDING_LOSSES) -> Type[RetrievalLoss]:
    """The loss class called ``name``; an unknown name fails with the choices."""
    key = name.lower().replace("-", "_")
    if key not in registry:
        raise UsageError(f"Unknown loss {name!r}; choose one of {sorted(registry)}.")
    return registry[key]


def get_loss(name: str, registry: Dict[str, Type[RetrievalLoss]] = EMBEDDING_LOSSES, **settings: Any) -> RetrievalLoss:
    """Build the loss called ``name`` with ``settings``; a setting it does not have is an error."""
    return loss_class(name, registry)(**settings)


def loss_from_args(name: str, registry: Dict[str, Type[RetrievalLoss]], args: Any, **overrides: Any) -> RetrievalLoss:
    """The loss called ``name`` with its own settings taken from training arguments (``overrides`` win)."""
    cls = loss_class(name, registry)
    settings = {k: getattr(args, k) for k in cls.setting_names() if hasattr(args, k)}
    settings.update({k: v for k, v in overrides.items() if k in cls.setting_names()})
    return cls(**settings)


__all__ = [
    "EMBEDDING_LOSSES", "FlopsRegularizedLoss", "InfoNCELoss", "LATE_INTERACTION_LOSSES", "LOSS_FAMILIES", "MatryoshkaLoss", "MaxSimCrossEntropyLoss", "ListwiseCrossEntropyLoss", "PointwiseBCELoss", "RANKING_LOSSES", "TeacherDistillLoss", "TripletMarginLoss",
    "RetrievalLoss", "get_loss", "loss_class", "loss_from_args",
]
