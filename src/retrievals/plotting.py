"""Charts written as PNG files: matplotlib is optional (the ``report`` extra), so every chart is skipped,
never failed, when it is missing."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional

from .files import atomic_write_bytes


def pyplot() -> Optional[Any]:
    """``matplotlib.pyplot`` on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: servers, CI, torchrun workers
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_png(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (a reader never sees half a PNG) and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
