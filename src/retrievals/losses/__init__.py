"""Training losses, one ``nn.Module`` per file, looked up by name with :func:`get_loss`."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Type

from torch import nn

from .infonce import InfoNCELoss
from .listwise_ce import ListwiseCrossEntropyLoss
from .pointwise_bce import PointwiseBCELoss
from .triplet import TripletMarginLoss

EMBEDDING_LOSSES: Dict[str, Type[nn.Module]] = {"infonce": InfoNCELoss, "triplet": TripletMarginLoss}
RANKING_LOSSES: Dict[str, Type[nn.Module]] = {"ce": ListwiseCrossEntropyLoss, "bce": PointwiseBCELoss}


def loss_class(name: str, registry: Dict[str, Type[nn.Module]] = EMBEDDING_LOSSES) -> Type[nn.Module]:
    """The loss class called ``name``; an unknown name fails with the choices."""
    key = name.lower().replace("-", "_")
    if key not in registry:
        raise ValueError(f"Unknown loss {name!r}; choose one of {sorted(registry)}.")
    return registry[key]


def get_loss(name: str, registry: Dict[str, Type[nn.Module]] = EMBEDDING_LOSSES, **kwargs: Any) -> nn.Module:
    """Build the loss called ``name`` from the settings it accepts (the training arguments reject a setting
    given for a loss that does not use it)."""
    cls = loss_class(name, registry)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})


__all__ = [
    "EMBEDDING_LOSSES", "InfoNCELoss", "ListwiseCrossEntropyLoss", "PointwiseBCELoss", "RANKING_LOSSES", "TripletMarginLoss",
    "get_loss", "loss_class",
]
