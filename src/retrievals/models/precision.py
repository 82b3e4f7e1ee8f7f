"""The precision inference runs at, apart from the weights' dtype.

``inference_precision`` (``from_pretrained(..., inference_precision=)``, ``model.inference_precision``, the
inference pipelines' ``--inference_precision``):

* ``auto`` (default): on a CUDA device, float32 weights run under bf16 autocast (fp16 where the GPU lacks
  bf16), the fast path of every current GPU; on CPU, exact float32 (a CPU's bf16 path is ``bf16`` or the
  OpenVINO backend: opting in keeps CPU results, which tests and reruns compare, exactly reproducible);
* ``fp32``: no autocast anywhere (results equal to the training forward's);
* ``bf16`` / ``fp16``: autocast to that type on any device (fp16 on CUDA only).

Embeddings and scores come out in float32 and are normalised in float32 whatever the precision, and weights
already in half precision (``dtype=``) run as they are.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional

import torch

from ..utils import UsageError

INFERENCE_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_inference_precision(precision: Any) -> str:
    if precision not in INFERENCE_PRECISIONS:
        raise UsageError(f"inference_precision must be one of {list(INFERENCE_PRECISIONS)}, got {precision!r}.")
    return precision


def autocast_dtype(precision: str, device: torch.device, weight_dtype: torch.dtype) -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device`` with weights of ``weight_dtype``; None: no autocast.

    >>> autocast_dtype("auto", torch.device("cpu"), torch.float32) is None
    True
    >>> autocast_dtype("bf16", torch.device("cpu"), torch.float32)
    torch.bfloat16
    """
    check_inference_precision(precision)
    if precision == "fp32" or weight_dtype in (torch.float16, torch.bfloat16):
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise UsageError(f"inference_precision='fp16' runs on CUDA only (this model is on {device.type}); "
                         "use 'bf16' on CPU, or the OpenVINO backend.")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), where bf16 autocast is the fast
    path (the LoRA-trained SmolLM2-135M reranker of ``benchmarks/rerank_recipes.py`` on this project's 2-core
    AVX512-BF16 machine: 0.47 s a training sequence, against 1.16 s in float32); without it torch emulates bf16,
    slower than float32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence looked up, not imported
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
