"""Search over document vectors."""

from .exact import exact_search

__all__ = ["exact_search"]
