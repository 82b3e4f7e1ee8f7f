"""Evaluation reports: JSON with every score-affecting setting, a Markdown table and a PNG chart."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..files import atomic_write_text
from ..plotting import pyplot, save_png
from ..utils import logger

REPORTED = ("ndcg@10", "map", "mrr@10", "recall@100")


def environment() -> Dict[str, str]:
    import torch
    import transformers

    from .. import __version__

    return {"retrievals": __version__, "transformers": transformers.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "date": datetime.date.today().isoformat()}


def model_settings(model: Any) -> Dict[str, Any]:
    """What decides a model's scores besides its weights: the saved config plus the weights' dtype."""
    config = getattr(model, "retrieval_config", None)
    settings = dict(vars(config)) if config is not None else {}
    try:
        settings["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    except (StopIteration, AttributeError):
        pass
    if hasattr(model, "inference_precision"):  # autocast changes scores too (models/precision.py)
        settings["inference_precision"] = model.inference_precision
        settings["inference_compile"] = model.inference_compile
    return settings


REPORT_FILES = ("report.json", "report.md", "report.png")


def write_report(folder: str | os.PathLike, dataset: Dict[str, Any], rows: Sequence[Dict[str, Any]], title: str) -> Dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.png`` (if matplotlib is installed) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = {"title": title, "dataset": dataset, "environment": environment(), "results": list(rows)}
    paths = {"json": folder / "report.json", "md": folder / "report.md"}
    atomic_write_text(paths["json"], json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = [f"# {title}", "", f"Dataset: {dataset['name']} ({dataset['queries']} queries, {dataset['documents']} documents, "
             f"hash {dataset['hash']}). {report['environment']['date']}, retrievals {report['environment']['retrievals']}, "
             f"transformers {report['environment']['transformers']}, torch {report['environment']['torch']}.", "",
             "| model | kind | " + " | ".join(REPORTED) + " |", "|---|---|" + "---|" * len(REPORTED)]
    for row in rows:
        lines.append(f"| {row['name']} | {row['kind']} | " + " | ".join(f"{row['metrics'].get(m, float('nan')):.4f}" for m in REPORTED) + " |")
    lines += ["", "Settings:", ""]
    for row in rows:
        lines.append(f"* **{row['name']}** (`{row['path']}`): " + ", ".join(f"{k}={v!r}" for k, v in row["settings"].items()))
    atomic_write_text(paths["md"], "\n".join(lines) + "\n")
    png = _chart(folder / "report.png", rows, title)
    if png:
        paths["png"] = png
    elif (folder / "report.png").is_file():  # an earlier report's chart beside this report would pass for its own
        (folder / "report.png").unlink()
        logger.warning("%s: removed the earlier report's chart (no chart this time: matplotlib is not installed).",
                       folder / "report.png")
    return paths


def _chart(path: Path, rows: Sequence[Dict[str, Any]], title: str):
    plt = pyplot()
    if plt is None:
        return None
    metrics: List[str] = [m for m in REPORTED[:3]]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(rows) + 2), 3.6))
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        values = [row["metrics"].get(metric, 0.0) for row in rows]
        bars = ax.bar([x + i * width for x in range(len(rows))], values, width, label=metric)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([x + width * (len(metrics) - 1) / 2 for x in range(len(rows))], [row["name"] for row in rows])
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_png(fig, path)
