"""Small helpers shared across the package: devices, dtypes, instructions, optional imports."""

from __future__ import annotations

import hashlib
import json
import importlib
import logging
import math
import numbers
import threading
from typing import Any, Optional, Union

import torch

logger = logging.getLogger("retrievals")

# transformers' from_pretrained swaps process-wide functions (torch.nn.init's, PreTrainedModel.init_weights) for
# no-ops while it loads and puts them back after; two loads in parallel threads can leave the no-ops in place for
# good, and every later fresh layer (a new head) then stays uninitialised. Every load of ours holds this lock.
LOADING = threading.RLock()


class UsageError(ValueError):
    """A wrong flag, setting or argument value: shown by the CLIs as one ``error:`` line (exit code 2). Any other
    exception is a bug and keeps its traceback."""

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """The given device, or CUDA when available, else CPU."""
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError):  # torch's message lists every device type it knows
            raise UsageError(f"device={device!r} is not a device (cpu, cuda, cuda:1, mps).") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: Optional[Union[str, torch.dtype]], device: torch.device) -> Optional[torch.dtype]:
    """Map a dtype name to a torch dtype; half precision on CPU falls back to float32 with a warning.

    None (the default) is float32 whatever a checkpoint stores: transformers 5 would otherwise load a bf16
    checkpoint (most hub LLMs) in bf16, silently away from exact float32 inference and float32 master weights in
    training. ``"auto"`` (None returned) keeps the stored dtype, as transformers' own ``auto``."""
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        return None
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise UsageError(f"Unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)} or 'auto'.")
        dtype = _DTYPES[dtype]
    if device.type == "cpu" and dtype == torch.float16:
        logger.warning("float16 is not supported for inference on CPU here; using float32 instead.")
        return torch.float32
    return dtype


def apply_instruction(instruction: Optional[str], text: str) -> str:
    """Apply an instruction to a text.

    A template with ``{}`` has the text put in place of its first ``{}``; any other
    instruction is a prefix. An empty or missing instruction returns the text unchanged.

    >>> apply_instruction("query: ", "how to renew a card")
    'query: how to renew a card'
    >>> apply_instruction("Find FAQs. Query: {} (Portuguese)", "card")
    'Find FAQs. Query: card (Portuguese)'
    >>> apply_instruction(None, "card")
    'card'
    """
    if not instruction:
        return text
    if "{}" in instruction:
        return instruction.replace("{}", text, 1)
    return instruction + text


def instruction_as_prefix(instruction: Optional[str]) -> Optional[str]:
    """The prefix equivalent of an instruction, or None when it cannot be written as a prefix."""
    if not instruction:
        return ""
    if "{}" not in instruction:
        return instruction
    head, _, tail = instruction.partition("{}")
    return head if tail == "" else None


def unescape_cli(text: Optional[str]) -> Optional[str]:
    """Turn the two-character sequences ``\\n`` and ``\\t`` typed in a shell into real newlines/tabs."""
    if text is None:
        return None
    return text.replace("\\n", "\n").replace("\\t", "\t")


def require(module: str, extra: str) -> Any:
    """Import an optional dependency or fail with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            f"This feature needs the optional package '{module}'. Install it with: pip install 'retrievals[{extra}]'"
        ) from exc


def at_least(flag: str, value: Optional[float], low: float) -> None:
    """``value`` (when given) must be >= ``low``; the error names the flag (argument checks of every CLI).

    >>> at_least("--batch_size", 8, 1)
    >>> at_least("--batch_size", 0, 1)
    Traceback (most recent call last):
    ...
    retrievals.utils.UsageError: --batch_size must be >= 1, got 0.
    """
    if value is not None and value < low:
        raise UsageError(f"{flag} must be >= {low}, got {value}.")


def finite_number(name: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as a float when it is a finite real number >= 0 (> 0 with ``positive``): the one check of every
    such setting (flags, loss settings, weights). A nan or inf weight or temperature makes every score or step loss
    nan or inf; a bool (``True`` would pass as 1) or a non-number is a TypeError, a bad number a UsageError, both
    naming ``name``.

    >>> finite_number("--margin", 0)
    0.0
    >>> finite_number("--margin", float("inf"))
    Traceback (most recent call last):
    ...
    retrievals.utils.UsageError: --margin must be a finite number >= 0, got inf.
    >>> finite_number("--temperature", 0.0, positive=True)
    Traceback (most recent call last):
    ...
    retrievals.utils.UsageError: --temperature must be a finite number > 0, got 0.0.
    >>> finite_number("--temperature", True, positive=True)
    Traceback (most recent call last):
    ...
    TypeError: --temperature must be a number, got bool.
    >>> finite_number("--margin", 10 ** 400)
    Traceback (most recent call last):
    ...
    retrievals.utils.UsageError: --margin must be a finite number >= 0, got one beyond a float's range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}.")
    bound = "> 0" if positive else ">= 0"
    try:
        number = float(value)
    except OverflowError:  # an int or fraction past a float (10 ** 400): math.isfinite raised this, naming nothing
        raise UsageError(f"{name} must be a finite number {bound}, got one beyond a float's range.") from None
    if not math.isfinite(number) or value < 0 or (positive and value == 0):
        raise UsageError(f"{name} must be a finite number {bound}, got {value}.")
    return number


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's weights as they are in memory (names, dtypes, shapes, values) and, for a model that
    runs on a CPU backend (``inference_backend``), that backend and precision, or that autocasts its inference
    (``inference_autocast``: bf16 on a GPU by default, or asked for), that dtype: a cache keyed by it never serves
    vectors computed by other weights or another runtime. A model with a ``tokenizer`` adds it (:func:`tokenizer_digest`):
    the same weights behind a tokenizer that does not lowercase give other vectors."""
    digest = hashlib.sha256()
    tokenizer = getattr(module, "tokenizer", None)
    if tokenizer is not None:
        digest.update(f"tokenizer\0{tokenizer_digest(tokenizer)}\0".encode())
    backend = getattr(module, "inference_backend", None)
    if backend is not None:  # the graph that runs (the weights it was made from), beside the torch module's own
        digest.update(f"backend\0{backend}\0{getattr(backend, 'graph_id', '')}\0".encode())
    autocast = getattr(module, "inference_autocast", None)
    dtype = autocast() if callable(autocast) else None
    if dtype is not None:  # float32 inference adds nothing: keys of models run that way stay as they were
        digest.update(f"autocast\0{dtype}\0".encode())
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{data.dtype}\0{tuple(data.shape)}\0".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16]


def tokenizer_digest(tokenizer: object) -> str:
    """sha256 of what decides a tokenizer's ids: a fast tokenizer's whole pipeline as JSON (normaliser, pre-tokeniser,
    vocabulary, post-processor, added tokens), else its class, vocabulary and settings; plus its padding and
    truncation sides and maximum length. Paths and names are left out: two copies of one tokenizer match."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # less its call state: each call sets the truncation and padding it asks for
        pipeline = json.dumps({k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")},
                              sort_keys=True)
    else:
        settings = {k: v for k, v in getattr(tokenizer, "init_kwargs", {}).items() if "name" not in k and "file" not in k}
        pipeline = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), settings],
                              sort_keys=True, default=str)
    sides = [getattr(tokenizer, name, None) for name in ("padding_side", "truncation_side", "model_max_length")]
    return hashlib.sha256(json.dumps([pipeline, sides], default=str).encode()).hexdigest()[:16]


# One spelling per concept across the CLIs; the other spellings in use stay accepted as aliases.
RERANKER_FLAG_ALIASES = ["--reranker_model", "--rerank_model"]  # canonical: --reranker_name_or_path
DTYPE_FLAG_ALIASES = ["--model_dtype"]  # canonical: --dtype
