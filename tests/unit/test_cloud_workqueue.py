"""The keyed executor: in order per key, in parallel across keys, timers, failures contained;
level-triggered work collapsed while it waits and retried with a per-key backoff."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

from harness.waiting import DeadlineExceeded, wait_for

from lifelong.cloud.workqueue import KeyedExecutor
from lifelong.common.backoff import FailureBackoff, exponential, exponential_jitter, wait_seconds


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
        other = next(k for k in keys if ex.worker_of(k) != ex.worker_of(first))
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


# -- ordered vs level-triggered work ---------------------------------------------------------


def _hold(ex: KeyedExecutor, key: str) -> threading.Event:
    """Keep ``key``'s worker busy until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(10)

    ex.submit(key, hold)
    assert started.wait(5)
    return release


def test_a_waiting_reconcile_is_replaced_by_the_newest_one() -> None:
    ex = KeyedExecutor(1)
    ran: list[int] = []
    try:
        release = _hold(ex, "k")
        for i in range(5):
            ex.reconcile("k", lambda i=i: ran.append(i))
        release.set()
        assert ex.wait_idle(10)
        assert ran == [4]
        assert ex.collapsed == 4
    finally:
        ex.shutdown()


def test_ordered_work_is_never_collapsed_nor_jumped_over() -> None:
    ex = KeyedExecutor(1)
    ran: list[str] = []
    try:
        release = _hold(ex, "k")
        ex.reconcile("k", lambda: ran.append("r1"))
        ex.submit("k", lambda: ran.append("s1"))
        ex.submit("k", lambda: ran.append("s2"))
        ex.reconcile("k", lambda: ran.append("r2"))  # behind s2: not merged into r1
        ex.reconcile("k", lambda: ran.append("r3"))  # replaces r2
        ex.reconcile("other", lambda: ran.append("o"))
        release.set()
        assert ex.wait_idle(10)
        assert ran == ["r1", "s1", "s2", "r3", "o"]
    finally:
        ex.shutdown()


def test_a_failing_reconcile_is_retried_with_its_keys_backoff_until_it_succeeds() -> None:
    failed: list[object] = []
    ex = KeyedExecutor(2, retry_backoff=FailureBackoff(exponential(0.05, 0.2)), on_failure=failed.append)
    attempts: list[float] = []
    try:
        start = time.monotonic()

        def flaky() -> None:
            attempts.append(time.monotonic() - start)
            if len(attempts) < 4:
                raise RuntimeError("store down")

        ex.reconcile("k", flaky)
        wait_for(lambda: len(attempts) == 4, timeout=10, what="four attempts")
        assert failed == ["k", "k", "k"]
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2  # 0.05 doubling, capped at 0.2
        wait_for(lambda: ex.retry_backoff.failures("k") == 0, what="the key's failures forgotten")
        assert ex.pending_retries() == 0
    finally:
        ex.shutdown()


def test_ordered_work_that_fails_is_not_retried() -> None:
    ex = KeyedExecutor(1, retry_backoff=FailureBackoff(exponential(0.01, 0.01)))
    calls: list[int] = []
    try:
        ex.submit("k", lambda: calls.append(1) or 1 / 0)  # type: ignore[func-returns-value]
        assert ex.wait_idle(5)
        assert not _true_within(lambda: len(calls) > 1, 0.3)
        assert ex.pending_retries() == 0
    finally:
        ex.shutdown()


def test_a_retry_is_dropped_when_newer_work_supersedes_it() -> None:
    ex = KeyedExecutor(1, retry_backoff=FailureBackoff(exponential(0.3, 0.3)))
    ran: list[str] = []

    def failing(name: str) -> None:
        ran.append(name)
        raise RuntimeError(name)

    try:
        ex.reconcile("a", lambda: failing("old a"))
        ex.reconcile("b", lambda: failing("old b"))
        wait_for(lambda: ex.pending_retries() == 2, what="two retries pending")
        ex.reconcile("a", lambda: ran.append("new a"))  # a newer reconcile of a
        ex.submit("b", lambda: ran.append("delete b"), supersede=True)  # b is deleted
        assert ex.wait_idle(5)
        assert not _true_within(lambda: ran.count("old a") > 1 or ran.count("old b") > 1, 0.8)
        assert ran == ["old a", "old b", "new a", "delete b"]
        assert ex.pending_retries() == 0
    finally:
        ex.shutdown()


def test_failure_backoff_counts_each_key_apart_and_forgets_on_success() -> None:
    backoff = FailureBackoff(exponential(1.0, 4.0))
    assert [backoff.when("a") for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert backoff.when("b") == 1.0
    backoff.forget("a")
    assert backoff.when("a") == 1.0
    assert wait_seconds(exponential(1.0, 4.0), 0) == 0.0
    jittered = exponential_jitter(1.0, 8.0, 0.5)
    assert all(4.0 <= wait_seconds(jittered, 3) <= 4.5 for _ in range(20))


def _true_within(predicate: Callable[[], bool], seconds: float) -> bool:
    try:
        wait_for(predicate, timeout=seconds)
    except DeadlineExceeded:
        return False
    return True


class RecordingBurst:
    """A burst that records each run it is given (as the tasks' labels) and runs its tasks."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.runs: list[list[int]] = []

    def run(self, tasks: list[Callable[[], None]]) -> None:
        self.runs.append([getattr(t, "label", -1) for t in tasks])
        for t in tasks:
            t()


class Labelled:
    def __init__(self, label: int, out: list[int]) -> None:
        self.label = label
        self.out = out

    def __call__(self) -> None:
        self.out.append(self.label)


def test_a_burst_takes_the_run_of_its_tasks_queued_next_to_each_other_in_order() -> None:
    ex = KeyedExecutor(1)
    burst = RecordingBurst(limit=4)
    release = threading.Event()
    order: list[int] = []
    try:
        ex.submit("a", lambda: release.wait(10) and None)  # everything below queues behind it
        for i in range(6):
            ex.submit("a" if i % 2 else "b", Labelled(i, order), burst=burst)
        ex.submit("c", lambda: order.append(100))  # not of the burst: ends the run
        ex.submit("a", Labelled(6, order), burst=burst)
        release.set()
        assert ex.wait_idle(10)
        assert order == [0, 1, 2, 3, 4, 5, 100, 6]  # the order of submission, kept
        assert burst.runs == [[0, 1, 2, 3], [4, 5], [6]]  # at most the limit; never across "c"
    finally:
        ex.shutdown()


def test_a_failed_burst_is_counted_once_and_the_worker_goes_on() -> None:
    failed: list[object] = []
    ex = KeyedExecutor(1, on_failure=failed.append)

    class Failing:
        limit = 10

        def run(self, tasks: list[Callable[[], None]]) -> None:
            raise RuntimeError("injected")

    release = threading.Event()
    after: list[int] = []
    try:
        ex.submit("a", lambda: release.wait(10) and None)
        burst = Failing()
        for _ in range(3):
            ex.submit("k", lambda: None, burst=burst)
        ex.submit("k", lambda: after.append(1))
        release.set()
        assert ex.wait_idle(10)  # the pending count dropped by the whole run
        assert failed == ["k"]
        assert after == [1]
    finally:
        ex.shutdown()
