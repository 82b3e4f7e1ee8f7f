"""Evaluation reports: JSON with every score-affecting setting, a Markdown table and a PNG chart."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..files import atomic_write_bytes
from ..plotting import new_figure, png_bytes
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
DATASET_KEYS = ("name", "queries", "documents", "hash")
ROW_KEYS = ("name", "kind", "path", "metrics", "settings")


def write_report(folder: str | os.PathLike, dataset: Dict[str, Any], rows: Sequence[Dict[str, Any]], title: str) -> Dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.png`` (if matplotlib is installed) into ``folder``,
    replacing an earlier report there (the caller decides whether it may: the evaluate pipeline asks first).

    ``dataset`` holds ``name``, ``queries``, ``documents`` and ``hash``; each row ``name``, ``kind``, ``path``,
    ``metrics`` (metric -> value; a missing or nan metric is ``null`` in the JSON, ``n/a`` in the table and no
    bar in the chart) and ``settings``. All three files are made in memory before the first is written: bad
    input or a failing chart leaves the earlier report whole, not part old and part new."""
    rows = list(rows)  # a generator would be used up by the JSON, leaving the table empty
    _check_report(dataset, rows, title)
    folder = Path(folder)
    report = {"title": title, "dataset": dataset, "environment": environment(), "results": rows}
    text = json.dumps(_finite_or_null(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"  # NaN is not JSON
    env = report["environment"]
    lines = [f"# {_one_line(title)}", "", f"Dataset: {_cell(dataset['name'])} ({dataset['queries']} queries, "
             f"{dataset['documents']} documents, hash {dataset['hash']}). {env['date']}, retrievals {env['retrievals']}, "
             f"transformers {env['transformers']}, torch {env['torch']}.", "",
             "| model | kind | " + " | ".join(REPORTED) + " |", "|---|---|" + "---|" * len(REPORTED)]
    for row in rows:
        lines.append(f"| {_cell(row['name'])} | {_cell(row['kind'])} | " +
                     " | ".join(_figure(row["metrics"].get(m)) for m in REPORTED) + " |")
    lines += ["", "Settings:", ""]
    for row in rows:
        lines.append(f"* **{_cell(row['name'])}** (`{_one_line(row['path'])}`): " +
                     ", ".join(f"{k}={v!r}" for k, v in row["settings"].items()))
    # encoded before anything is written: a lone surrogate in a name fails here, not between two files
    markdown, text = ("\n".join(lines) + "\n").encode("utf-8"), text.encode("utf-8")
    png = _chart(rows, title)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "md": folder / "report.md"}
    if png is not None:
        paths["png"] = folder / "report.png"
        atomic_write_bytes(paths["png"], png)
    elif (folder / "report.png").is_file():  # an earlier report's chart beside this report would pass for its own
        (folder / "report.png").unlink()
        logger.warning("%s: removed the earlier report's chart (no chart this time: matplotlib is not installed).",
                       folder / "report.png")
    atomic_write_bytes(paths["md"], markdown)
    atomic_write_bytes(paths["json"], text)  # last: the record of a finished report
    return paths


def _check_report(dataset: Any, rows: List[Any], title: Any) -> None:
    if not isinstance(title, str):
        raise TypeError(f"title must be a string, got {type(title).__name__}")
    if not isinstance(dataset, dict) or any(k not in dataset for k in DATASET_KEYS):
        raise TypeError(f"dataset must be a dict with {list(DATASET_KEYS)}, got {dataset!r:.120}")
    for i, row in enumerate(rows):
        missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise TypeError(f"rows[{i}] must be a dict with {list(ROW_KEYS)}; it lacks {missing}")
        for key in ("metrics", "settings"):
            if not isinstance(row[key], dict):
                raise TypeError(f"rows[{i}]['{key}'] must be a dict, got {type(row[key]).__name__}")


def _value(value: Any) -> float | None:
    """A metric as a float, or None when it is missing or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _figure(value: Any) -> str:
    number = _value(value)
    return "n/a" if number is None else f"{number:.4f}"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())  # a newline in a name or title would end its table row or heading


def _cell(text: Any) -> str:
    return _one_line(text).replace("|", "\\|")  # "a|b" would split its row into more cells


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def _chart(rows: Sequence[Dict[str, Any]], title: str) -> bytes | None:
    metrics: List[str] = [m for m in REPORTED[:3]]
    fig = new_figure(figsize=(max(5, 1.6 * len(rows) + 2), 3.6))
    if fig is None:
        return None
    ax = fig.subplots()
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        drawn = [(x, _value(row["metrics"].get(metric))) for x, row in enumerate(rows)]
        drawn = [(x, v) for x, v in drawn if v is not None]  # a missing metric is no bar, not a bar at 0
        bars = ax.bar([x + i * width for x, _ in drawn], [v for _, v in drawn], width, label=metric)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([x + width * (len(metrics) - 1) / 2 for x in range(len(rows))], [_one_line(row["name"]) for row in rows])
    ax.set_ylim(0, 1.05)
    ax.set_title(_one_line(title), fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return png_bytes(fig)
