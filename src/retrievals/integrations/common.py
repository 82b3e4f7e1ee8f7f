"""What every integration adapter shares."""

from __future__ import annotations

from typing import Any, Dict, Optional


def model_or_load(model: Any, path: Optional[str], loader: Any, kwargs: Optional[Dict[str, Any]], what: str) -> Any:
    """``model`` when given, else ``loader.from_pretrained(path, **kwargs)``; one of the two is required."""
    if model is not None:
        return model
    if path is None:
        raise ValueError(f"pass a loaded {what} (model=...) or the path of one to load")
    return loader.from_pretrained(path, **(kwargs or {}))
