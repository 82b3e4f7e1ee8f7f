"""Side-by-side timing shared by the benchmarks: inference rounds taken in turns, and training steps timed by a
callback in both libraries' trainers (scripts import it as ``timing``: benchmarks/ is their sys.path[0])."""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import retrievals.training.run as run_module  # noqa: E402
from retrievals.training.trainer import RetrievalTrainer  # noqa: E402


def take_turns(runs: Dict[str, Callable[[], float]], rounds: int) -> dict:
    """Call each run (which returns its own items a second) ``rounds`` times, the runs taking turns: a shared
    2-core VM drifts by +-15% from one minute to the next, so turns keep the comparison fair. Returns
    ``{name: best round, "median": {name: median round}, "ratio": first run's best / second run's best}``."""
    rates: Dict[str, list] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            rates[name].append(run())
    return best_and_median(rates)


def best_and_median(values: Dict[str, List[float]], best: Callable[[List[float]], float] = max) -> dict:
    """Summary of each name's rounds: ``{name: best round, "median": {name: median round}, "ratio": first name's
    best / second name's best}``. ``best=min`` for measures where lower is better (latencies)."""
    result: Dict[str, Any] = {name: round(best(v), 2) for name, v in values.items()}
    result["median"] = {name: round(statistics.median(v), 2) for name, v in values.items()}
    first, second = list(values)[:2]
    result["ratio"] = round(result[first] / result[second], 2) if result[second] else None
    return result


def side_by_side(runs: Dict[str, Callable[[], Any]], items: int, rounds: int = 5) -> Tuple[dict, dict]:
    """:func:`take_turns` for runs that return an output (their wall time is measured here), with each
    run's last output."""
    outputs: Dict[str, Any] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            outputs[name] = fn()
            return items / (time.perf_counter() - start)
        return run

    return take_turns({name: timed(name, fn) for name, fn in runs.items()}, rounds), outputs


class StepTimer(TrainerCallback):
    """Wall time from the end of step ``warmup`` to the end of the last step, so loading, compiling, the first
    steps and saving are left out. On a GPU it synchronises at those two steps only (a sync every step would
    stall the CPU as real training does not)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.seconds, self.steps = warmup, None, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available() and state.global_step in (self.warmup, state.max_steps):
            torch.cuda.synchronize()
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
        if state.global_step == state.max_steps and self.start is not None:
            self.seconds = time.perf_counter() - self.start
            self.steps = state.max_steps - self.warmup

    def rate(self, items_per_step: int) -> float:
        """Items a second over the timed steps."""
        return round(self.steps * items_per_step / self.seconds, 2)


TIMER: List[TrainerCallback] = []  # the callback that our next trainer gets (see timing_our_training)


class _TimedTrainer(RetrievalTrainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if TIMER:
            self.add_callback(TIMER[-1])


run_module.RetrievalTrainer = _TimedTrainer  # our pipelines build their trainer in retrievals.training.run


@contextmanager
def timing_our_training(callback: TrainerCallback) -> Iterator[TrainerCallback]:
    """Within the block, the trainers our pipelines build carry ``callback`` (a StepTimer or a profiler)."""
    TIMER.append(callback)
    try:
        yield callback
    finally:
        TIMER.pop()
