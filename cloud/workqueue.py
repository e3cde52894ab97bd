"""The GM's keyed executor: work for one key runs in order, different keys run in parallel.

Who uses it: the GM service and its intake hand every store event, every upstream report and
every hello, presence and ack to it, keyed by what the work is about (the object, or the node),
so one job's work runs one task after another while other jobs proceed on other threads
(kopf's and Sedna's rule). The controllers use ``call_later`` for a delay (``retryAfter``).

Two kinds of work, chosen by the caller:

* ``submit(key, fn)`` - **ordered**: every task runs, in the order submitted, never merged with
  another. For edge-triggered work whose every item counts: an upstream report, a hello, an ack
  batch, a delete. A task that raises is logged and counted; it is not retried here (a report
  that fails is not acknowledged, so the LC resends it).
* ``reconcile(key, fn)`` - **level-triggered**: "bring this key to its desired state", where
  ``fn`` reads what it needs when it runs. If the last task queued for ``key`` is a reconcile
  that has not started yet, ``fn`` takes its place instead of queueing behind it (client-go's
  workqueue collapses a key already waiting the same way); the newest ``fn`` is kept, because it
  carries the newest event. Never merged across an ordered task: order between the two kinds
  is kept. A reconcile that raises is retried after its key's next wait from a
  :class:`~lifelong.common.backoff.FailureBackoff` (tenacity's jittered exponential wait, per key,
  like client-go's ``ItemExponentialFailureRateLimiter``); a success forgets the key's failures.
  A retry is dropped when newer work superseded it: another ``reconcile`` of the key, or an
  ordered task submitted with ``supersede=True`` (a delete).

Each key hashes to one of N worker threads; a worker runs its queue in FIFO order.

Bursts: an ordered task submitted with a ``burst`` (``submit(key, fn, burst=b)``) may be run
together with the tasks queued right behind it on the same worker that name the same burst, up
to ``b.limit`` of them: the worker hands the whole run to ``b.run(tasks)`` in queue order
(the intake applies such a run of reports in one transaction, ``cloud/intake.py``). Only a
contiguous run is taken, so the order of every key's work is the same as without bursts; a
burst never waits for more tasks to come, it takes what is queued when its first task's turn
comes (alone when idle). ``b.run`` owns the failures of its tasks: one that raises is logged
and counted once for the run.

Reconciles may burst too (``reconcile(key, fn, burst=b)``): a waiting reconcile still collapses
into the newest, and ``b.run`` returns what each task raised (None for each that succeeded), so
that a failed reconcile is logged, counted and retried after its key's backoff as it is alone
(the job controller's reconciles write their conditions in one store transaction per run,
``cloud/service.py``).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
import zlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lifelong.common.backoff import FailureBackoff, exponential_jitter

log = logging.getLogger(__name__)

Task = Callable[[], None]

RETRY_BASE = 0.5
"""First wait before a failed reconcile runs again (seconds); doubles per failure of its key..."""
RETRY_CAP = 60.0
"""...up to this."""


class Burst(Protocol):
    """Runs a run of ordered tasks together (see the module docstring)."""

    limit: int
    """The most tasks one run takes."""

    def run(self, tasks: list[Task]) -> Sequence[Exception | None] | None:
        """Run ``tasks`` (in the order given, which is the order submitted). Either None (it
        handled every failure itself) or, per task, what it raised (None: it succeeded)."""


@dataclass(slots=True)
class _Item:
    key: Hashable
    fn: Task
    level: bool  # a reconcile (may be replaced while waiting, retried on failure)
    started: bool = False
    burst: Burst | None = None


class _Worker:
    def __init__(self) -> None:
        self.items: collections.deque[_Item | None] = collections.deque()  # None: stop
        self.tails: dict[Hashable, _Item] = {}  # key -> its last queued item, until it starts
        self.cv = threading.Condition()


class KeyedExecutor:
    """N worker threads; work for a key always runs on the worker that owns the key."""

    def __init__(
        self,
        workers: int = 4,
        *,
        name: str = "work",
        retry_backoff: FailureBackoff | None = None,
        on_failure: Callable[[Hashable], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.retry_backoff = retry_backoff or FailureBackoff(exponential_jitter(RETRY_BASE, RETRY_CAP))
        self.on_failure = on_failure
        """Called with the key of every task that raised (the GM counts them)."""
        self.collapsed = 0
        """Reconciles that took the place of one already waiting for the same key."""
        self._workers = [_Worker() for _ in range(workers)]
        self._threads = [
            threading.Thread(target=self._run, args=(w,), name=f"{name}-{i}", daemon=True)
            for i, w in enumerate(self._workers)
        ]
        self._timers: list[tuple[float, int, Task]] = []
        self._timer_cv = threading.Condition()
        self._seq = itertools.count()
        self._retries: dict[Hashable, int] = {}  # key -> the token of its pending retry
        self._retries_lock = threading.Lock()
        self._stopped = threading.Event()
        self._timer_thread = threading.Thread(target=self._run_timers, name=f"{name}-timers", daemon=True)
        self._pending = 0
        self._pending_cv = threading.Condition()
        for t in self._threads:
            t.start()
        self._timer_thread.start()

    def worker_of(self, key: Hashable) -> int:
        """The index of the worker thread that runs ``key``'s work (stable for the process)."""
        return zlib.crc32(repr(key).encode()) % len(self._workers)

    # -- queueing --------------------------------------------------------------------------
    def submit(self, key: Hashable, fn: Task, *, supersede: bool = False, burst: Burst | None = None) -> None:
        """Queue ``fn`` behind every earlier task of ``key``; it runs once, whatever follows.

        ``supersede``: this task makes a pending retry of ``key``'s reconcile pointless (it
        deletes the object); the retry is dropped. ``burst``: ``fn`` may run within a run of
        tasks of the same burst queued next to it (``burst.run``), see the module docstring."""
        if supersede:
            self._cancel_retry(key)
            self.retry_backoff.forget(key)
        self._enqueue(key, fn, level=False, burst=burst)

    def reconcile(self, key: Hashable, fn: Task, *, burst: Burst | None = None) -> None:
        """Queue level-triggered work for ``key``, collapsing into a reconcile already waiting.
        ``burst``: it may run within a run of the same burst (see the module docstring)."""
        self._cancel_retry(key)
        self._enqueue(key, fn, level=True, burst=burst)

    def call_later(self, delay: float, key: Hashable, fn: Task) -> None:
        """Submit ``fn`` for ``key`` (ordered) after ``delay`` seconds."""
        self._at(delay, lambda: self.submit(key, fn))

    def _enqueue(self, key: Hashable, fn: Task, *, level: bool, burst: Burst | None = None) -> None:
        if self._stopped.is_set():
            return
        worker = self._workers[self.worker_of(key)]
        with worker.cv:
            tail = worker.tails.get(key)
            if level and tail is not None and tail.level and not tail.started and tail.burst is burst:
                tail.fn = fn  # the newest event wins; the key keeps its place in the queue
                with self._pending_cv:
                    self.collapsed += 1
                return
            item = _Item(key, fn, level, burst=burst)
            worker.tails[key] = item
            with self._pending_cv:
                self._pending += 1
            worker.items.append(item)
            worker.cv.notify()

    # -- retries ---------------------------------------------------------------------------
    def _cancel_retry(self, key: Hashable) -> None:
        with self._retries_lock:
            self._retries.pop(key, None)

    def _retry_later(self, key: Hashable, fn: Task, burst: Burst | None = None) -> None:
        delay = self.retry_backoff.when(key)
        token = next(self._seq)
        with self._retries_lock:
            self._retries[key] = token

        def fire() -> None:
            with self._retries_lock:
                if self._retries.get(key) != token:
                    return  # newer work for the key superseded this retry
                del self._retries[key]
            self._enqueue(key, fn, level=True, burst=burst)

        log.debug("reconcile of %r: retrying in %.2fs", key, delay)
        self._at(delay, fire)

    def pending_retries(self) -> int:
        """Reconciles waiting for their retry (for tests and metrics)."""
        with self._retries_lock:
            return len(self._retries)

    # -- running ---------------------------------------------------------------------------
    def pending(self) -> int:
        """Tasks queued or running (timers and waiting retries not counted)."""
        with self._pending_cv:
            return self._pending

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no queued task is pending (timers not counted). For tests and shutdown."""
        deadline = time.monotonic() + timeout
        with self._pending_cv:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._pending_cv.wait(left)
        return True

    def _run(self, worker: _Worker) -> None:
        while True:
            with worker.cv:
                while not worker.items:
                    worker.cv.wait()
                item = worker.items.popleft()
                if item is None:
                    return
                item.started = True
                if worker.tails.get(item.key) is item:
                    del worker.tails[item.key]
                fn = item.fn
                run = self._take_burst(worker, item) if item.burst is not None else None
            if run is not None:
                self._run_burst(item, run)
                continue
            try:
                fn()
            except Exception as exc:
                self._failed(item, fn, exc)
            else:
                if item.level:
                    self.retry_backoff.forget(item.key)
            finally:
                with self._pending_cv:
                    self._pending -= 1
                    if not self._pending:
                        self._pending_cv.notify_all()

    def _failed(self, item: _Item, fn: Task, exc: Exception) -> None:
        """Log and count a task that raised ``exc``; a reconcile is retried after its backoff."""
        if item.level and self.retry_backoff.failures(item.key):
            # failed before: one line per retry, the traceback was logged the first time
            log.warning("reconcile of %r failed again: %s: %s", item.key, type(exc).__name__, exc)
        else:
            log.error("task for %r failed", item.key, exc_info=exc)
        if self.on_failure is not None:
            try:
                self.on_failure(item.key)
            except Exception:
                log.exception("counting a failed task failed")
        if item.level and not self._stopped.is_set():
            self._retry_later(item.key, fn, item.burst)

    @staticmethod
    def _take_burst(worker: _Worker, first: _Item) -> list[_Item]:
        """``first`` and the tasks of its burst queued right behind it (up to its limit);
        called with the worker's lock held."""
        burst = first.burst
        assert burst is not None
        run = [first]
        items = worker.items
        while items and len(run) < burst.limit:
            nxt = items[0]
            if nxt is None or nxt.burst is not burst:
                break
            items.popleft()
            nxt.started = True
            if worker.tails.get(nxt.key) is nxt:
                del worker.tails[nxt.key]
            run.append(nxt)
        return run

    def _run_burst(self, first: _Item, run: list[_Item]) -> None:
        assert first.burst is not None
        fns = [item.fn for item in run]
        try:
            results = first.burst.run(fns)
            for item, fn, exc in zip(run, fns, results or (), strict=False):
                if exc is not None:
                    self._failed(item, fn, exc)
                elif item.level:
                    self.retry_backoff.forget(item.key)
        except Exception:
            log.exception("a burst of %d tasks starting with %r failed", len(run), first.key)
            if self.on_failure is not None:
                try:
                    self.on_failure(first.key)
                except Exception:
                    log.exception("counting a failed task failed")
        finally:
            with self._pending_cv:
                self._pending -= len(run)
                if not self._pending:
                    self._pending_cv.notify_all()

    def _at(self, delay: float, fn: Task) -> None:
        with self._timer_cv:
            heapq.heappush(self._timers, (time.monotonic() + max(0.0, delay), next(self._seq), fn))
            self._timer_cv.notify()

    def _run_timers(self) -> None:
        while not self._stopped.is_set():
            with self._timer_cv:
                if not self._timers:
                    self._timer_cv.wait(0.5)
                    continue
                when, _, fn = self._timers[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._timer_cv.wait(min(delay, 0.5))
                    continue
                heapq.heappop(self._timers)
            try:
                fn()
            except Exception:
                log.exception("a timer failed")

    def shutdown(self, timeout: float = 5.0) -> None:
        """Finish queued tasks (up to ``timeout``) and stop the threads."""
        self._stopped.set()
        with self._timer_cv:
            self._timer_cv.notify_all()
        for worker in self._workers:
            with worker.cv:
                worker.items.append(None)
                worker.cv.notify()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._timer_thread.join(max(0.0, deadline - time.monotonic()))
