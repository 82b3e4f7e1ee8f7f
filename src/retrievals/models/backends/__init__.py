"""CPU inference backends: ONNX Runtime (``onnx``) and OpenVINO (``openvino``) standing in for a model's torch
backbone at inference (:mod:`.base`). Graphs are exported once and found again (:mod:`.graphs`).

A model kind opts in by naming the backbone output its torch code reads (``backend_output``: the embedder's
``last_hidden_state``, the cross-encoder's ``logits``) and the inputs it passes (``backend_inputs``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence, Type

from ...utils import UsageError
from .base import Backend, BackendOutput, GraphSpec, cpu_threads
from .graphs import ensure_graph, model_key, stored_key

BACKENDS = ("torch", "onnx", "openvino")
PRECISIONS = ("fp32", "int8", "bf16")


def backend_class(name: str) -> Type[Backend]:
    if name == "onnx":
        from .onnx import OnnxBackend

        return OnnxBackend
    from .openvino import OpenVINOBackend

    return OpenVINOBackend


def check_backend(model_cls: Any, name: str, precision: str, device: Any = None, dtype: Any = None,
                  lora: bool = False) -> None:
    """Refuse, before anything loads, a backend or precision that is unknown, or not available for this kind,
    this CPU or these settings."""
    if name not in BACKENDS:
        raise UsageError(f"Unknown backend {name!r}; choose one of {list(BACKENDS)}.")
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown backend_precision {precision!r}; choose one of {list(PRECISIONS)}.")
    if name == "torch":
        if precision != "fp32":
            raise UsageError("backend_precision is for backend='onnx' or 'openvino'; with torch, use dtype.")
        return
    if getattr(model_cls, "backend_output", None) is None:
        raise UsageError(f"backend={name!r} is not available for {model_cls.model_type} models (only dense embedders "
                         "and cross-encoders); use backend='torch'.")
    if device is not None and str(device) != "cpu":
        raise UsageError(f"backend={name!r} runs on CPU; got device={str(device)!r} (use backend='torch' on a GPU).")
    if dtype not in (None, "auto", "float32", "fp32") and str(dtype) != "torch.float32":
        raise UsageError(f"backend={name!r} runs a float32 graph; got dtype={dtype!r} (set backend_precision instead).")
    if lora:
        raise UsageError(f"backend={name!r} runs a full model, not LoRA adapters: save it with "
                         "save_pretrained(path, merge_lora=True) and load that folder.")
    backend_class(name).check(precision)


def _graph(model: Any, backbone: Any, name: str, precision: str, model_dirs: Sequence[Path]) -> tuple:
    cls = backend_class(name)
    spec = GraphSpec(model.model_type, tuple(model.backend_inputs()), model.backend_output)
    base = model_key(backbone, spec)
    return cls, spec, ensure_graph(backbone, spec, base, cls, cls.graph_precision(precision), model_dirs)


def load_backend(model: Any, path: Optional[str], name: str, precision: str) -> Backend:
    """The backend running ``model``'s backbone: its graph from the saved folder ``path`` when that holds this
    model's graph, else from the cache (exported there once)."""
    cls, spec, folder = _graph(model, model.backbone, name, precision, [Path(path)] if path and Path(path).is_dir() else [])
    backend = cls(folder, spec, precision)
    key = {k: v for k, v in (stored_key(folder) or {}).items() if k != "versions"}
    backend.graph_id = json.dumps(key, sort_keys=True)
    return backend


def save_backend(model: Any, backbone: Any, scratch: Path, name: str, precision: str) -> None:
    """Copy the graph of ``backbone`` (the one being saved) for ``name``/``precision`` into ``scratch/<name>/`` (a
    save's scratch folder), exporting it into the cache first when it is not there."""
    import torch

    if any(p.dtype != torch.float32 for p in backbone.parameters()):
        raise UsageError(f"backend={name!r} exports float32 weights; this model is in another dtype (load it in float32).")
    loaded = getattr(model, "inference_backend", None)
    _, _, folder = _graph(model, backbone, name, precision, [loaded.folder.parent] if loaded is not None else [])
    shutil.copytree(folder, scratch / name)


__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BackendOutput", "GraphSpec", "backend_class", "check_backend",
           "cpu_threads", "load_backend", "save_backend"]
