"""What every integration adapter shares."""

from __future__ import annotations

from typing import Any, Dict, Optional


def model_or_load(model: Any, path: Optional[str], loader: Any, kwargs: Optional[Dict[str, Any]], what: str) -> Any:
    """``model`` when given, else ``loader.from_pretrained(path, **kwargs)``; exactly one of the two is required (a
    path or settings beside a loaded model would be silently ignored: refused)."""
    if model is not None:
        if path is not None or kwargs:
            raise ValueError(f"pass a loaded {what} (model=...) or the path of one to load (with model_kwargs), not "
                             f"both: {'the path' if path is not None else 'model_kwargs'} would not apply to the loaded one")
        return model
    if path is None:
        raise ValueError(f"pass a loaded {what} (model=...) or the path of one to load")
    return loader.from_pretrained(path, **(kwargs or {}))
