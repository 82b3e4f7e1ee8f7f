"""A compiled backbone forward for batched inference (``inference_compile``).

``inference_compile`` (``from_pretrained(..., inference_compile=)``, ``model.inference_compile``, the inference
pipelines' ``--inference_compile``):

* ``auto`` (default): on a CUDA device, the batched inference loop (``RetrievalModel.run_batches``: ``encode``,
  ``compute_score``, ``rerank``) runs the backbone through ``torch.compile`` with CUDA graphs
  (``mode="reduce-overhead"``): one graph replay a batch instead of hundreds of kernel launches from Python. On CPU,
  eager torch (a CPU's fast path is the OpenVINO backend). Where compiling fails (no triton, an architecture
  dynamo cannot trace), ``auto`` warns once and stays eager for that model;
* ``on``: compile on any device (CPU: inductor's C++ code, no CUDA graphs); a failure is raised;
* ``off``: eager torch.

A CUDA graph replays fixed shapes, so a compiled call pads its batch to few shapes: the sequence length up to a
bucket (:func:`bucket_length`) and the number of rows up to a power of two or the loop's batch size
(:func:`bucket_rows`); the added rows copy the first row and every added position is masked, then the outputs are
cut back. Encoders and decoders give the same vectors with or without that padding (to float rounding, tested). Training never
runs compiled through this (its fast path is ``--torch_compile``), nor does any call outside the batched loop.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Any, Dict, Iterator, Optional

import torch

from ..utils import UsageError

INFERENCE_COMPILES = ("auto", "on", "off")
COMPILE_BACKEND: Optional[str] = None  # torch.compile's backend: None = inductor (tests set "eager": dynamo only)
_ACTIVE = threading.local()  # the CompiledForward a thread's batched loop runs under, and its batch size


def check_inference_compile(value: Any) -> str:
    if value not in INFERENCE_COMPILES:
        raise UsageError(f"inference_compile must be one of {list(INFERENCE_COMPILES)}, got {value!r}.")
    return value


def wants_compile(setting: str, device: torch.device) -> bool:
    """Whether the batched inference loop compiles at ``setting`` on ``device``.

    >>> wants_compile("auto", torch.device("cpu")), wants_compile("on", torch.device("cpu"))
    (False, True)
    """
    check_inference_compile(setting)
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def bucket_length(n: int, cap: int) -> int:
    """The padded sequence length of a batch whose longest input has ``n`` tokens: a multiple of 32 up to 256,
    of 128 above, never past ``cap`` (the model's longest input), and ``n`` itself beyond ``cap``.

    >>> [bucket_length(n, 512) for n in (1, 32, 33, 250, 257, 500, 512, 600)]
    [32, 32, 64, 256, 384, 512, 512, 600]
    >>> bucket_length(40, 48)
    48
    """
    if n >= cap:
        return n
    step = 32 if n <= 256 else 128
    return min(-(-n // step) * step, cap)


def bucket_rows(n: int, batch_size: int) -> int:
    """The padded number of rows of a batch of ``n``: the next power of two, or ``batch_size`` (the loop's full
    batch) when that is smaller; ``n`` itself beyond ``batch_size``.

    >>> [bucket_rows(n, 48) for n in (1, 3, 17, 33, 48, 60)]
    [1, 4, 32, 48, 48, 60]
    """
    if n >= batch_size:
        return n
    return min(1 << (n - 1).bit_length(), batch_size)


class CompiledForward:
    """``torch.compile`` of one backbone on one device, with the padding to few shapes and the lock that keeps
    each call's outputs until the caller has copied them (a CUDA graph's next replay overwrites them)."""

    def __init__(self, backbone: torch.nn.Module, device: torch.device, pad_token_id: int, cap: int, strict: bool) -> None:
        self.backbone, self.device, self.pad_token_id, self.cap, self.strict = backbone, device, pad_token_id, cap, strict
        self.graphs = device.type == "cuda"
        mode = "reduce-overhead" if self.graphs else None
        self.module = torch.compile(backbone, dynamic=True, mode=mode, **({"backend": COMPILE_BACKEND} if COMPILE_BACKEND else {}))
        self.lock = threading.RLock()
        self.failed: Optional[BaseException] = None

    def __deepcopy__(self, memo: Dict[int, Any]) -> None:
        return None  # a copied model compiles its own backbone on first use

    def __reduce__(self) -> Any:
        return (_nothing, ())  # nor does a pickled model carry compiled code

    @contextlib.contextmanager
    def active(self, batch_size: int) -> Iterator[None]:
        """This thread's backbone calls go through the compiled forward until the block ends (under the lock:
        copy what the block needs of the outputs before it ends)."""
        with self.lock:
            _ACTIVE.forward, _ACTIVE.batch_size = self, batch_size
            try:
                yield
            finally:
                _ACTIVE.forward = None

    def __call__(self, eager: torch.nn.Module, left: bool, **inputs: Any) -> Any:
        if self.failed is not None:
            return eager(**inputs)
        mask = inputs["attention_mask"]
        rows, width = mask.shape
        padded_rows, padded_width = bucket_rows(rows, _ACTIVE.batch_size), bucket_length(width, self.cap)
        padded = {k: _pad(k, v, rows, width, padded_rows, padded_width, left, self.pad_token_id) for k, v in inputs.items()}
        try:
            if self.graphs:
                torch.compiler.cudagraph_mark_step_begin()  # inference only: the previous call's outputs are copied
            out = self.module(**padded)
        except Exception as error:  # noqa: BLE001 - compiling can fail in many ways; auto falls back, on raises
            if self.strict:
                raise
            self.failed = error
            warnings.warn(f"inference_compile='auto': compiling the backbone failed ({type(error).__name__}: "
                          f"{str(error)[:300]}); running it eagerly (inference_compile='off' skips the attempt).",
                          RuntimeWarning, stacklevel=2)
            return eager(**inputs)
        return _cut(out, rows, width, padded_rows, padded_width, left)


def _nothing() -> None:
    return None


def active_forward() -> Optional[CompiledForward]:
    """The compiled forward this thread's batched loop runs under, if any."""
    return getattr(_ACTIVE, "forward", None)


def _pad(name: str, value: Any, rows: int, width: int, padded_rows: int, padded_width: int, left: bool, pad_id: int) -> Any:
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or tuple(value.shape) != (rows, width):
        return value  # not a per-token input (e.g. logits_to_keep)
    if padded_width > width:  # masked positions: padding tokens, no attention, position 0
        fill = value.new_full((rows, padded_width - width), pad_id if name == "input_ids" else 0)
        value = torch.cat([fill, value] if left else [value, fill], dim=1)
    if padded_rows > rows:  # copies of the first row: a real input, so no row is all padding
        value = torch.cat([value, value[:1].expand(padded_rows - rows, -1)])
    return value


def _cut(out: Any, rows: int, width: int, padded_rows: int, padded_width: int, left: bool) -> Any:
    """The backbone output of the padded batch cut back to the caller's rows and positions."""
    def cut(value: Any) -> Any:
        if isinstance(value, tuple):
            return tuple(cut(v) for v in value)
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != padded_rows:
            return value
        value = value[:rows]
        if padded_width > width and value.dim() >= 2 and value.shape[1] == padded_width:
            value = value[:, padded_width - width:] if left else value[:, :width]
        return value

    fields: Dict[str, Any] = {k: cut(v) for k, v in out.items()}
    return type(out)(**fields)
