"""What a CPU inference backend provides: a callable that stands in for a model's torch backbone at inference.

It takes the backbone's keyword inputs (``input_ids``, ``attention_mask`` and, where the model passes them,
``token_type_ids`` / ``position_ids``) and returns an object with the backbone's output field
(``last_hidden_state`` or ``logits``) as a float32 torch tensor. Everything after the transformer (pooling,
normalisation, scoring) stays in the model's torch code, so a model behaves the same whatever runs it.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Dict, Optional, Tuple, Type

import numpy as np
import torch


@dataclass(frozen=True)
class GraphSpec:
    """The backbone call a graph replaces: the model kind, its input names (in graph order) and its output field."""

    kind: str
    inputs: Tuple[str, ...]
    output: str


@dataclass
class BackendOutput:
    last_hidden_state: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None


def cpu_threads() -> int:
    """Threads a backend runs one batch with: the physical cores this process may use (hyper-threads add little to
    dense matrix products and slow a busy machine down), or ``os.cpu_count()`` where that cannot be told."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    return max(1, min(available, physical or available))


class Backend(abc.ABC):
    """One runtime. A subclass names itself, its pip extra and precisions, says how its graph of a precision is
    made (``source``/``convert``; the ONNX fp32 graph is made from torch's export, every other graph from one)
    and runs a batch (``run``)."""

    name: ClassVar[str]
    extra: ClassVar[str]  # pip install 'retrievals[<extra>]'
    precisions: ClassVar[Tuple[str, ...]]
    module: ClassVar[str]  # the package imported to use it

    def __init__(self, folder: Path, spec: GraphSpec, precision: str) -> None:
        self.folder = folder  # where the graph was read from (a saved model's subfolder or a cache entry)
        self.spec = spec
        self.precision = precision
        self.graph_id = ""  # what the graph was made from (its backend.json key): a cache key reads it

    @classmethod
    def graph_precision(cls, precision: str) -> str:
        """The precision of the stored graph that runs ``precision`` (bf16 is a runtime setting over the fp32 graph)."""
        return "int8" if precision == "int8" else "fp32"

    @classmethod
    def check(cls, precision: str) -> None:
        """Refuse, before anything loads, a precision this backend or this CPU cannot run (a UsageError)."""

    @classmethod
    @abc.abstractmethod
    def source(cls, graph: str) -> Optional[Tuple[Type["Backend"], str]]:
        """The (backend, graph precision) this graph is converted from; None: from torch's ONNX export."""

    @classmethod
    @abc.abstractmethod
    def convert(cls, source: Path, out: Path, graph: str) -> None:
        """Write this backend's graph of precision ``graph`` into ``out``, made from the graph in ``source`` (the
        folder of ``source(graph)``'s graph, or of torch's ONNX export where that is None)."""

    @abc.abstractmethod
    def run(self, feeds: Dict[str, np.ndarray]) -> np.ndarray:
        """The output of one batch (int64 inputs by name)."""

    def __call__(self, **inputs: Optional[torch.Tensor]) -> BackendOutput:
        given = sorted(k for k, v in inputs.items() if v is not None)
        if given != sorted(self.spec.inputs):  # a bug of ours: the graph was exported for other inputs
            raise RuntimeError(f"{self} was exported for inputs {list(self.spec.inputs)}, called with {given}.")
        feeds = {n: inputs[n].detach().to("cpu", torch.int64).numpy() for n in self.spec.inputs}
        return BackendOutput(**{self.spec.output: torch.from_numpy(np.asarray(self.run(feeds), dtype=np.float32))})

    def __str__(self) -> str:
        return f"{self.name}/{self.precision}"
