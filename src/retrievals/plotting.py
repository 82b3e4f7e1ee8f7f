"""Charts written as PNG files: matplotlib is optional (the ``report`` extra), so every chart is skipped,
never failed, when it is missing.

Figures are drawn on ``matplotlib.figure.Figure`` directly, never through pyplot: pyplot's figures are global
state shared by threads, and choosing its backend (``matplotlib.use``) would switch a notebook or desktop
user's whole process to a file-only one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional

from .files import atomic_write_bytes


def new_figure(**kwargs: Any) -> Optional[Any]:
    """A ``matplotlib.figure.Figure(**kwargs)`` (draw with ``fig.subplots``), or None when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401  (first: a submodule imported earlier would pass for an installed matplotlib)
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(**kwargs)


def png_bytes(fig: Any, dpi: int = 110) -> bytes:
    """``fig`` rendered as PNG (Agg, whatever pyplot's backend is)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches itself to fig: savefig renders with Agg
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    return buffer.getvalue()


def save_png(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (a reader never sees half a PNG)."""
    atomic_write_bytes(path, png_bytes(fig, dpi))
    return path
