"""The keyed executor: in order per key, in parallel across keys, timers, failures contained."""

from __future__ import annotations

import threading
import time

from harness.waiting import wait_for

from lifelong.cloud.workqueue import KeyedExecutor


def test_tasks_of_one_key_run_in_order() -> None:
    ex = KeyedExecutor(4)
    seen: dict[str, list[int]] = {"a": [], "b": []}
    try:
        for i in range(200):
            for key in seen:
                ex.submit(key, lambda k=key, i=i: seen[k].append(i))
        assert ex.wait_idle(10)
        assert seen["a"] == list(range(200))
        assert seen["b"] == list(range(200))
    finally:
        ex.shutdown()


def test_different_keys_run_in_parallel() -> None:
    ex = KeyedExecutor(8)
    blocker = threading.Event()
    done = threading.Event()
    try:
        # find two keys owned by different workers
        keys = [f"k{i}" for i in range(50)]
        first = keys[0]
        other = next(k for k in keys if ex._index(k) != ex._index(first))
        ex.submit(first, lambda: blocker.wait(10))
        ex.submit(other, done.set)
        assert done.wait(5), "a blocked key held up another key"
    finally:
        blocker.set()
        ex.shutdown()


def test_a_failing_task_does_not_stop_its_worker() -> None:
    ex = KeyedExecutor(1)
    ran = threading.Event()
    try:
        ex.submit("k", lambda: 1 / 0)
        ex.submit("k", ran.set)
        assert ran.wait(5)
    finally:
        ex.shutdown()


def test_call_later_runs_after_the_delay() -> None:
    ex = KeyedExecutor(2)
    ran: list[float] = []
    try:
        start = time.monotonic()
        ex.call_later(0.2, "k", lambda: ran.append(time.monotonic() - start))
        wait_for(lambda: ran, timeout=5, what="the timer")
        assert ran[0] >= 0.2
    finally:
        ex.shutdown()
