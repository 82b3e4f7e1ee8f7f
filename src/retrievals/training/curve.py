"""The training curve a user looks at first: loss and held-out metrics against the step, as
``training_curve.png`` in the run folder, drawn once the final model is saved (so it always belongs to the model
beside it). During the run, each evaluation redraws ``training_curve.running.png`` (a long or killed run shows how
far it got, a diverged one why it was not saved); a run that saves its model replaces it by the final curve. The
numbers themselves are in ``trainer_state.json``'s ``log_history``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from transformers import TrainerCallback

from ..plotting import new_figure, save_png

CURVE_NAME = "training_curve.png"
RUNNING_CURVE_NAME = "training_curve.running.png"
EVAL_METRICS = ("eval_ndcg@10", "eval_map", "eval_mrr@10")


def curve_points(log_history: Sequence[Dict[str, Any]]) -> Dict[str, List[tuple]]:
    """``{"loss": [(step, value), ...], "eval_ndcg@10": [...], ...}`` from a Trainer's log history."""
    points: Dict[str, List[tuple]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        for key in ("loss", "eval_loss", *EVAL_METRICS):
            if isinstance(entry.get(key), (int, float)):
                points.setdefault(key, []).append((step, float(entry[key])))
    return points


def write_training_curve(log_history: Sequence[Dict[str, Any]], path: Path, title: str = "") -> Optional[Path]:
    """Draw loss (left) and held-out metrics (right) against the step; None when there is nothing to draw or
    matplotlib is missing."""
    points = curve_points(log_history)
    evals = [k for k in EVAL_METRICS if k in points]
    fig = new_figure(figsize=(9 if evals else 5, 3.4)) if points else None
    if fig is None:
        return None
    axes = fig.subplots(1, 2 if evals else 1, squeeze=False)
    loss_ax = axes[0][0]
    for key in ("loss", "eval_loss"):
        if key in points:
            steps, values = zip(*points[key])
            loss_ax.plot(steps, values, marker="." if key == "eval_loss" else None, label=key)
    loss_ax.set_xlabel("step")
    loss_ax.set_title("loss", fontsize=10)
    loss_ax.legend(fontsize=8)
    if evals:
        metric_ax = axes[0][1]
        for key in evals:
            steps, values = zip(*points[key])
            metric_ax.plot(steps, values, marker="o", label=key.replace("eval_", "held-out "))
        metric_ax.set_xlabel("step")
        metric_ax.set_title("held-out (--eval_data)", fontsize=10)
        metric_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


class TrainingCurve(TrainerCallback):
    """Redraw ``training_curve.running.png`` in ``output_dir`` after each evaluation (main process only; the file is
    recorded in the run folder's manifest before it is written)."""

    def __init__(self, run_folder: Any = None) -> None:
        self.run_folder = run_folder

    def on_evaluate(self, args, state, control, **kwargs):  # noqa: D401
        if state.is_world_process_zero:
            draw_curve(state.log_history, Path(args.output_dir), self.run_folder, RUNNING_CURVE_NAME)


def draw_curve(log_history: Sequence[Dict[str, Any]], folder: Path, run_folder: Any = None,
               name: str = CURVE_NAME) -> Optional[Path]:
    """Draw ``name`` into a run folder (noted in its manifest first); the final curve replaces the running one."""
    if run_folder is not None:
        run_folder.record(name)
    path = write_training_curve(log_history, folder / name, title=folder.name)
    if name == CURVE_NAME:
        (folder / RUNNING_CURVE_NAME).unlink(missing_ok=True)
    return path
