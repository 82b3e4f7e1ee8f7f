"""The input contract of the Python API, checked in one place by every entry point.

``encode*``, ``compute_score``, ``rerank`` and the indexes' ``search`` all accept the same shapes: one item
or a list of them (an empty list gives an empty result), and they fail early with a ``TypeError`` that
names the bad item's position, instead of an obscure error deep in the tokenizer (or, worse, a dict
silently iterated as its keys).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from .utils import UsageError

Pair = Tuple[str, str]


def _kind(value: Any) -> str:
    return type(value).__name__


def document_text(doc: Any, where: str) -> str:
    """The text of one document: a string, or a BEIR dict ``{"title": ..., "text": ...}`` (title and text joined)."""
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict):
        text, title = doc.get("text"), doc.get("title")
        if not isinstance(text, str):
            raise TypeError(f"{where} must have a string 'text', got {_kind(text)}")
        if title is not None and not isinstance(title, str):
            raise TypeError(f"{where}['title'] must be a string, got {_kind(title)}")
        title = (title or "").strip()
        return f"{title} {text}".strip() if title else text
    raise TypeError(f"{where} must be a string or a dict with 'text', got {_kind(doc)}")


def check_encodable(text: str, where: str) -> str:
    """``text`` when it is valid Unicode. A lone surrogate ("\\ud800", which json.loads and surrogateescape
    decoding can produce) passes every str check but no tokenizer: it would fail there with an unrelated TypeError
    naming neither the item nor the cause. Only non-ASCII text is encoded to check (``isascii`` costs nothing)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UsageError(f"{where} has a lone surrogate at character {exc.start} ({text[exc.start]!r}), which "
                             "is not valid Unicode text; fix the source's \\u escapes or decode it with "
                             "errors='replace'.") from None
    return text


def unordered(items: Any) -> bool:
    """A set (results in arbitrary order) or a table (a pandas DataFrame iterates over its column names)."""
    return isinstance(items, (set, frozenset)) or (hasattr(items, "columns") and hasattr(items, "iloc"))


def as_texts(items: Any, name: str, documents: bool = False) -> Tuple[List[str], bool]:
    """``(texts, single)``: ``items`` as a list of strings, and whether it was one item.

    A string is one item; with ``documents`` a dict is one document too (see :func:`document_text`),
    never iterated as its keys. Anything else must be an iterable of such items (list, tuple, numpy
    array, generator); ``None``, bytes and non-string items raise ``TypeError`` naming their position, and a
    string with a lone surrogate a ``UsageError`` (a ``ValueError``) naming its position (:func:`check_encodable`).
    """
    if isinstance(items, str) or (documents and isinstance(items, dict)):
        return [check_encodable(document_text(items, name) if documents else items, name)], True
    if items is None or isinstance(items, (bytes, bytearray, dict)) or not hasattr(items, "__iter__"):
        kinds = "a string, a dict or a list of them" if documents else "a string or a list of strings"
        raise TypeError(f"{name} must be {kinds}, got {_kind(items)}")
    if unordered(items):
        raise TypeError(f"{name} must be an ordered sequence (list, tuple, array, Series), got {_kind(items)}: "
                        f"{'its column names were taken as the texts' if hasattr(items, 'columns') else 'its order is arbitrary, so results could not be matched to the inputs'}")
    out = list(items)
    for i, item in enumerate(out):
        if documents:
            out[i] = document_text(item, f"{name}[{i}]")
        elif not isinstance(item, str):
            raise TypeError(f"{name}[{i}] must be a string, got {_kind(item)}")
        check_encodable(out[i], f"{name}[{i}]")
    return out, False


def as_pairs(pairs: Any, name: str = "pairs") -> Tuple[List[Pair], bool]:
    """``(pairs, single)``: one ``(query, document)`` tuple of strings, or a list of tuples/lists of two strings."""
    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(t, str) for t in pairs):
        return [(check_encodable(pairs[0], f"{name}[0]"), check_encodable(pairs[1], f"{name}[1]"))], True
    if pairs is None or isinstance(pairs, (str, bytes, dict)) or not hasattr(pairs, "__iter__") or unordered(pairs):
        raise TypeError(f"{name} must be a (query, document) pair or a list of them, got {_kind(pairs)}")
    out = list(pairs)
    for i, pair in enumerate(out):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"{name}[{i}] must be a (query, document) pair of strings, got {pair!r:.80}")
        for j, text in enumerate(pair):
            if not isinstance(text, str):
                raise TypeError(f"{name}[{i}][{j}] must be a string, got {_kind(text)}")
            check_encodable(text, f"{name}[{i}][{j}]")
        out[i] = (pair[0], pair[1])
    return out, False


def check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {_kind(batch_size)}")
    if batch_size <= 0:
        raise UsageError(f"batch_size must be > 0, got {batch_size}")
    return int(batch_size)


def check_top_k(top_k: Any, allow_none: bool = False) -> Optional[int]:
    """``top_k`` as an int (``None`` passes through where it means "all"); 0 is valid: empty results."""
    if top_k is None and allow_none:
        return None
    return check_int("top_k", top_k, 0)


def check_flags(**flags: Any) -> None:
    """Each keyword a bool (numpy's too) or None: the string ``"no"`` is truthy, so ``normalize_embeddings="no"``
    normalised and ``is_query="no"`` encoded queries.

    >>> check_flags(normalize=True, is_query=None)
    >>> check_flags(normalize="no")
    Traceback (most recent call last):
    ...
    TypeError: normalize must be True or False, got str
    """
    for name, value in flags.items():
        if value is not None and not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {_kind(value)}")


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (a setting such as ``nprobe`` or ``shard_size``): a named error otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {_kind(value)}")
    if value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_finite(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` unchanged when every value is finite: a nan or inf vector would rank first in one backend and
    vanish from another."""
    if array.size and not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0][0]) if array.ndim > 1 else 0
        raise UsageError(f"{name}[{row}] has a nan or inf value; vectors must be finite.")
    return array


def as_float32(values: Any, name: str) -> np.ndarray:
    """``values`` (numbers, nested lists, an array or a torch tensor) as a contiguous float32 array. Texts are a
    TypeError: numpy read ["1", "0"] as a vector, and "tax card" failed with "could not convert string to float"
    naming nothing; None inside was "has a nan"."""
    if hasattr(values, "detach"):  # .float(): numpy has no bfloat16, and refused such tensors naming no argument
        values = values.detach().cpu().float()
    try:
        raw = np.asarray(values)
    except ValueError as exc:  # rows of different lengths
        raise UsageError(f"{name} must be vectors of one size: {exc}") from None
    if raw.size and raw.dtype.kind not in "biuf":
        texts = raw.dtype.kind in "USO" and any(isinstance(v, str) for v in raw.ravel()[:100])
        raise TypeError(f"{name} must be vectors of numbers, got {'texts: encode them first' if texts else raw.dtype}")
    return np.ascontiguousarray(raw, dtype=np.float32)


def as_query_vectors(queries: Any, dim: int) -> np.ndarray:
    """Query vectors as a float32 matrix [n, dim]: one vector (1-D) is one query, an empty list is zero queries."""
    if queries is None or isinstance(queries, (str, bytes, dict)):
        raise TypeError(f"queries must be vectors (an array [n, {dim}]), got {_kind(queries)}")
    array = as_float32(queries, "queries")
    if array.size == 0:
        return np.zeros((0, dim), dtype=np.float32)
    array = array[None, :] if array.ndim == 1 else array
    if array.ndim != 2 or array.shape[1] != dim:
        raise UsageError(f"queries must be vectors of size {dim}, got an array of shape {tuple(array.shape)}")
    return check_finite(array, "queries")


def check_same_length(first: Sequence[Any], second: Sequence[Any], names: str) -> None:
    if len(first) != len(second):
        raise UsageError(f"{names}: {len(first)} and {len(second)} items; they must match one to one")
