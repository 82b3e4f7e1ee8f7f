"""Dynamic batching: requests that arrive together share one model call, run on one worker thread."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Hashable, List, Optional, Sequence


@dataclass
class _Job:
    key: Hashable
    items: Sequence[Any]
    fn: Callable[[List[Any]], Sequence[Any]]
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Queue of jobs (``key``, items, ``fn``) served by one worker thread.

    The worker takes the oldest job, then every queued job with the same ``key`` (for up to
    ``max_wait_ms`` more, while the total stays within ``max_batch_size`` items), calls ``fn`` once on
    all their items and hands each job its slice of the results. Under load, requests that arrive
    while a batch runs are merged into the next one; a lone request waits at most ``max_wait_ms``.
    An exception in ``fn`` fails the jobs of that call only.
    """

    def __init__(self, max_batch_size: int = 256, max_wait_ms: float = 2.0) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self._jobs: Deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.stats: Dict[str, int] = {"jobs": 0, "model_calls": 0, "items": 0}
        self._thread = threading.Thread(target=self._work, name="retrievals-batcher", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, items: Sequence[Any], fn: Callable[[List[Any]], Sequence[Any]]) -> Future:
        """Queue ``items`` for ``fn``; the future resolves to the list of their results, in order."""
        job = _Job(key, list(items), fn)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def _take_batch(self) -> Optional[List[_Job]]:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            first = self._jobs.popleft()
            batch, size = [first], len(first.items)
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch_size:
                for job in list(self._jobs):
                    if job.key == first.key and size + len(job.items) <= self.max_batch_size:
                        self._jobs.remove(job)
                        batch.append(job)
                        size += len(job.items)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            items = [item for job in batch for item in job.items]
            self.stats["jobs"] += len(batch)
            self.stats["model_calls"] += 1
            self.stats["items"] += len(items)
            try:
                results = list(batch[0].fn(items))
                if len(results) != len(items):
                    raise RuntimeError(f"model call returned {len(results)} results for {len(items)} inputs")
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting requests
                for job in batch:
                    job.future.set_exception(exc)
                continue
            start = 0
            for job in batch:
                job.future.set_result(results[start : start + len(job.items)])
                start += len(job.items)
