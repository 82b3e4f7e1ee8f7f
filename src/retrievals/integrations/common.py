"""What every integration adapter shares."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional


def model_or_load(model: Any, path: Optional[str], loader: Any, kwargs: Optional[Dict[str, Any]], what: str,
                  path_arg: str, needs: str) -> Any:
    """``model`` when given, else ``loader.from_pretrained(path, **kwargs)``; exactly one of the two is required (a
    path or settings beside a loaded model would be silently ignored: refused). ``model`` must have the method
    ``needs``: a path given as ``model`` (the first positional argument) built the adapter and failed at its first
    call, naming no argument."""
    if model is not None:
        if path is not None or kwargs:
            raise ValueError(f"pass a loaded {what} (model=...) or the path of one to load (with model_kwargs), not "
                             f"both: {'the path' if path is not None else 'model_kwargs'} would not apply to the loaded one")
        if isinstance(model, (str, bytes, os.PathLike)):
            raise TypeError(f"model must be a loaded {what}, got the path {os.fsdecode(model)!r}: pass a path as "
                            f"{path_arg}=...")
        if not callable(getattr(model, needs, None)):
            raise TypeError(f"model must be a loaded {what} (with a {needs} method), got {type(model).__name__}")
        return model
    if path is None:
        raise ValueError(f"pass a loaded {what} (model=...) or the path of one to load ({path_arg}=...)")
    return loader.from_pretrained(path, **(kwargs or {}))
