"""A small keyed executor: work for one key runs in order, different keys run in parallel.

Who uses it: the GM service hands every store event and every upstream report to it, keyed by
the resource it is about, so a job's events are handled one after another while other jobs
proceed on other threads (kopf's and Sedna's rule). ``call_later`` schedules work for a key
after a delay (backoff, ``retryAfter``) without a thread per timer.

Each key hashes to one of N worker threads; a worker runs its queue in FIFO order. A task that
raises is logged and does not stop its worker.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

Task = Callable[[], None]
_STOP = object()


class KeyedExecutor:
    """N worker threads; ``submit(key, fn)`` runs ``fn`` on the worker that owns ``key``."""

    def __init__(self, workers: int = 4, *, name: str = "work") -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._queues: list[queue.SimpleQueue[object]] = [queue.SimpleQueue() for _ in range(workers)]
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name=f"{name}-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        self._timers: list[tuple[float, int, Hashable, Task]] = []
        self._timer_cv = threading.Condition()
        self._seq = itertools.count()
        self._stopped = threading.Event()
        self._timer_thread = threading.Thread(target=self._run_timers, name=f"{name}-timers", daemon=True)
        self._pending = 0
        self._pending_cv = threading.Condition()
        for t in self._threads:
            t.start()
        self._timer_thread.start()

    def _index(self, key: Hashable) -> int:
        return zlib.crc32(repr(key).encode()) % len(self._queues)

    def submit(self, key: Hashable, fn: Task) -> None:
        """Queue ``fn`` behind every earlier task of ``key``."""
        if self._stopped.is_set():
            return
        with self._pending_cv:
            self._pending += 1
        self._queues[self._index(key)].put(fn)

    def call_later(self, delay: float, key: Hashable, fn: Task) -> None:
        """Submit ``fn`` for ``key`` after ``delay`` seconds."""
        with self._timer_cv:
            heapq.heappush(self._timers, (time.monotonic() + max(0.0, delay), next(self._seq), key, fn))
            self._timer_cv.notify()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no submitted task is pending (timers not counted). For tests and shutdown."""
        deadline = time.monotonic() + timeout
        with self._pending_cv:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._pending_cv.wait(left)
        return True

    def _run(self, q: queue.SimpleQueue[object]) -> None:
        while True:
            item = q.get()
            if item is _STOP:
                return
            try:
                item()  # type: ignore[operator]
            except Exception:
                log.exception("task failed")
            finally:
                with self._pending_cv:
                    self._pending -= 1
                    if not self._pending:
                        self._pending_cv.notify_all()

    def _run_timers(self) -> None:
        while not self._stopped.is_set():
            with self._timer_cv:
                if not self._timers:
                    self._timer_cv.wait(0.5)
                    continue
                when, _, key, fn = self._timers[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._timer_cv.wait(min(delay, 0.5))
                    continue
                heapq.heappop(self._timers)
            self.submit(key, fn)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Finish queued tasks (up to ``timeout``) and stop the threads."""
        self._stopped.set()
        with self._timer_cv:
            self._timer_cv.notify_all()
        for q in self._queues:
            q.put(_STOP)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._timer_thread.join(max(0.0, deadline - time.monotonic()))
