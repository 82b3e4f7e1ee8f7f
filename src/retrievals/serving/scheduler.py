"""Token-budget scheduling: many requests share model calls on one worker thread, fairly and with deadlines.

A request becomes a :class:`Job` of items (texts or reranking units), each with a token cost. The worker
forms each model call from the pending jobs of one key (one model and mode), taking items round-robin
across jobs until the padded cost (longest item x items) would pass ``max_batch_tokens``. So a request of
thousands of items runs as many small calls, and a one-text request that arrives meanwhile rides in the
next call: its latency is bounded by one call, not by the long request. Keys take turns the same way.

Jobs past their deadline, or cancelled (client gone, shutdown), have their remaining items dropped. The
queue is bounded in items: a job that does not fit is refused at once (:class:`QueueFull`). Nothing a job
does can stop the worker: a failing call fails only the jobs in it, and a result for a job nobody waits for
any more is dropped. :meth:`health` reports a dead or stuck worker.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

from ..utils import logger


SIMILAR = 2  # items within this factor of each other's length fill a call together


class QueueFull(Exception):
    """The queue holds too many items to take this job now."""


class JobTooLarge(QueueFull):
    """The job alone has more items than the queue ever holds: waiting would never help."""


class DeadlineExceeded(Exception):
    """The job's deadline passed before all its items were computed."""


class JobCancelled(Exception):
    """The job was cancelled (its client went away, or the server is shutting down)."""


@dataclass(eq=False)  # compared and hashed by identity
class Job:
    key: Hashable
    items: Sequence[Any]
    costs: Sequence[int]
    fn: Callable[[List[Any]], Sequence[Any]]
    deadline: float
    future: Future = field(default_factory=Future)
    results: List[Any] = field(default_factory=list)
    next_item: int = 0  # first item not yet scheduled
    done_items: int = 0
    id: int = 0

    @property
    def pending(self) -> int:
        return len(self.items) - self.next_item


def _settle(future: Future, result: Any = None, error: Optional[BaseException] = None) -> None:
    """Resolve a future unless it is already resolved or cancelled (its waiter gave up): never raises."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled between the check and the call
        pass


class Scheduler:
    """One worker thread running token-budgeted model calls for queued jobs (see the module docstring)."""

    def __init__(self, max_batch_tokens: int = 8192, max_batch_items: int = 32, max_queue_items: int = 8192,
                 max_wait_ms: float = 2.0, stall_s: float = 120.0,
                 on_batch: Optional[Callable[[Hashable, int, int, float], None]] = None) -> None:
        if max_batch_tokens < 1 or max_batch_items < 1 or max_queue_items < 1:
            raise ValueError("max_batch_tokens, max_batch_items and max_queue_items must be >= 1")
        self.max_batch_tokens, self.max_batch_items, self.max_queue_items = max_batch_tokens, max_batch_items, max_queue_items
        self.max_wait, self.stall_s, self.on_batch = max_wait_ms / 1000.0, stall_s, on_batch
        self._jobs: "OrderedDict[Hashable, List[Job]]" = OrderedDict()  # key -> its jobs, served round-robin
        self._cond = threading.Condition()
        self._closed = False
        self._ids = itertools.count(1)
        self._busy_since: Optional[float] = None
        self.stats: Dict[str, int] = {"jobs": 0, "model_calls": 0, "items": 0, "dropped_items": 0, "failed_calls": 0}
        self._thread = threading.Thread(target=self._work, name="retrievals-scheduler", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- client side
    def submit(self, key: Hashable, items: Sequence[Any], costs: Sequence[int], fn: Callable[[List[Any]], Sequence[Any]],
               timeout_s: Optional[float] = None) -> Job:
        """Queue a job; its future resolves to the results of ``fn`` for its items, in order."""
        if len(items) != len(costs):
            raise ValueError("one cost per item")
        deadline = time.monotonic() + timeout_s if timeout_s else float("inf")
        job = Job(key, list(items), [max(1, int(c)) for c in costs], fn, deadline, results=[None] * len(items))
        with self._cond:
            if self._closed:
                raise JobCancelled("the server is shutting down")
            if len(items) > self.max_queue_items:
                raise JobTooLarge(f"{len(items)} items; the queue holds at most {self.max_queue_items}")
            self._expire(time.monotonic())  # cancelled and late jobs free their room first
            if self.queued_items() + len(items) > self.max_queue_items:
                raise QueueFull(f"{self.queued_items()} items are queued; the limit is {self.max_queue_items}")
            job.id = next(self._ids)
            if not items:
                _settle(job.future, [])
                return job
            self._jobs.setdefault(key, []).append(job)
            self.stats["jobs"] += 1
            self._cond.notify_all()
        return job

    def cancel(self, job: Job, reason: Optional[BaseException] = None) -> None:
        """Drop the job's remaining items and fail its future (a no-op once it finished)."""
        with self._cond:
            self._remove(job, reason or JobCancelled("cancelled"))

    def queued_items(self) -> int:
        """Items waiting for a model call (those of jobs nobody waits for any more are not counted)."""
        with self._cond:
            return sum(job.pending for jobs in self._jobs.values() for job in jobs if not job.future.done())

    def health(self) -> Tuple[bool, str]:
        """(healthy, reason): unhealthy when the worker died or one model call has run longer than ``stall_s``
        (0: never for that; any call outlasts 0 s, and a busy server is not a stalled one)."""
        if not self._thread.is_alive():
            return False, "the scheduler's worker thread is not running"
        busy = self._busy_since
        if self.stall_s and busy is not None and time.monotonic() - busy > self.stall_s:
            return False, f"one model call has been running for more than {self.stall_s:.0f} s"
        return True, "ok"

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking jobs, cancel the queued ones, and wait (bounded) for the call in progress."""
        with self._cond:
            self._closed = True
            for jobs in list(self._jobs.values()):
                for job in list(jobs):
                    self._remove(job, JobCancelled("the server is shutting down"))
            self._cond.notify_all()
        self._thread.join(timeout=timeout_s)

    # ---------------------------------------------------------------- worker side
    def _remove(self, job: Job, error: Optional[BaseException]) -> None:
        """Take a job off the queue (lock held); dropped items are counted; the future fails with ``error``."""
        jobs = self._jobs.get(job.key)
        if jobs and job in jobs:
            jobs.remove(job)
            self.stats["dropped_items"] += job.pending
            job.next_item = len(job.items)
            if not jobs:
                del self._jobs[job.key]
        if error is not None:
            _settle(job.future, error=error)

    def _expire(self, now: float) -> None:
        for jobs in list(self._jobs.values()):
            for job in list(jobs):
                if job.future.done():  # cancelled by its waiter
                    self._remove(job, None)
                elif now > job.deadline:
                    self._remove(job, DeadlineExceeded("the request's deadline passed"))

    def _take(self) -> Optional[Tuple[Hashable, List[Tuple[Job, int]]]]:
        """The next call's (key, [(job, item index)]); None when closed and empty."""
        with self._cond:  # a Condition's default lock is reentrant
            while True:
                self._expire(time.monotonic())
                if not self._jobs:
                    if self._closed:
                        return None
                    self._cond.wait(timeout=0.5)  # wake now and then to expire deadlines
                    continue
                key = next(iter(self._jobs))
                self._jobs.move_to_end(key)  # keys take turns
                waited = time.monotonic() + self.max_wait  # a lone small job waits briefly for company
                while (sum(j.pending for j in self._jobs.get(key, [])) < self.max_batch_items
                       and time.monotonic() < waited and not self._closed):
                    self._cond.wait(timeout=max(0.0, waited - time.monotonic()))
                jobs = self._jobs.get(key)
                if jobs:  # else cancelled or expired while waiting: start over
                    return key, self._pick(key, jobs)

    def _pick(self, key: Hashable, jobs: List[Job]) -> List[Tuple[Job, int]]:
        """Items for one call (lock held). First one item from every waiting job, so a short job is never stuck
        behind a long one; then more items round-robin, within ``max_batch_tokens`` padded tokens, but only while
        the call's items are of similar length: a one-text request then never waits for a call filled with a
        long request's texts (that call would take the whole budget's time). At least one item is taken."""
        picked: List[Tuple[Job, int]] = []
        longest, shortest, first_pass = 0, None, True
        while len(picked) < self.max_batch_items:
            progress = False
            for job in jobs:
                if job.pending == 0 or len(picked) >= self.max_batch_items:
                    continue
                cost = job.costs[job.next_item]
                if picked and max(longest, cost) * (len(picked) + 1) > self.max_batch_tokens:
                    continue
                if not first_pass and cost > SIMILAR * shortest:
                    continue
                picked.append((job, job.next_item))
                job.next_item += 1
                longest, shortest = max(longest, cost), cost if shortest is None else min(shortest, cost)
                progress = True
            if not progress or (first_pass and longest > SIMILAR * shortest):
                break
            first_pass = False
        jobs.append(jobs.pop(0))  # the job that led this call goes to the back
        for job in {j for j, _ in picked}:
            if job.pending == 0:
                jobs.remove(job)  # fully scheduled: it finishes when its call returns
        if not jobs:
            del self._jobs[key]
        return picked

    def _work(self) -> None:
        while True:
            try:
                taken = self._take()
            except Exception:  # noqa: BLE001 - a scheduling bug must not leave every request hanging
                logger.exception("scheduler error; going on")
                time.sleep(0.1)
                continue
            if taken is None:
                return
            key, picked = taken
            if not picked:
                continue
            items = [job.items[i] for job, i in picked]
            started = self._busy_since = time.monotonic()
            try:
                results = list(picked[0][0].fn(items))
                if len(results) != len(items):
                    raise RuntimeError(f"model call returned {len(results)} results for {len(items)} inputs")
            except BaseException as exc:  # noqa: BLE001 - fails the jobs of this call only; the worker goes on
                logger.warning("model call failed (%s: %s); its %d request(s) fail", type(exc).__name__, exc,
                               len({id(j) for j, _ in picked}))
                with self._cond:
                    self.stats["failed_calls"] += 1
                    for job in {j for j, _ in picked}:
                        self._remove(job, exc)
                continue
            finally:
                self._busy_since = None
            elapsed = time.monotonic() - started
            with self._cond:
                self.stats["model_calls"] += 1
                self.stats["items"] += len(items)
                for (job, index), result in zip(picked, results):
                    job.results[index] = result
                    job.done_items += 1
                    if job.done_items == len(job.items):
                        _settle(job.future, job.results)
            if self.on_batch is not None:
                try:
                    self.on_batch(key, len(items), max(j.costs[i] for j, i in picked) * len(items), elapsed)
                except Exception:  # noqa: BLE001 - metrics must never stop the worker
                    logger.exception("batch metrics callback failed")
