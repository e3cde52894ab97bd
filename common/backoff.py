"""Waits between retries, from tenacity's wait strategies: no backoff of our own.

Who uses it, on the GM: the keyed executor (``cloud/workqueue.py``: a failing reconcile is requeued after
its key's next wait, like client-go's ``ItemExponentialFailureRateLimiter``), the delivery's
resend of unacknowledged rows (``cloud/delivery.py``: the wait before attempt n), and the
Kubernetes watches (``cloud/stores/kubernetes.py``, ``cloud/runtimes/kubernetes_pods.py``: the
wait after the n-th failed list or watch in a row). On the LC: the session's hello retry
(``edge/session.py``: how long a hello waits for its ``sync`` before it is said again).

A tenacity wait strategy is a callable of a ``RetryCallState``; :func:`wait_seconds` evaluates
one for attempt n without a ``Retrying`` loop, for the places where the loop is ours (a ticker,
a watch that resets its count after a good stream, a work queue).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

import tenacity
from tenacity.wait import wait_base

__all__ = ["FailureBackoff", "exponential", "exponential_jitter", "wait_seconds"]


def exponential(base: float, cap: float) -> wait_base:
    """``base * 2**(n-1)``, at most ``cap``: the same wait for the same attempt (no jitter)."""
    return tenacity.wait_exponential(multiplier=base, max=cap)


def exponential_jitter(base: float, cap: float, jitter: float | None = None) -> wait_base:
    """``min(base * 2**(n-1), cap)`` plus up to ``jitter`` (default ``base``) at random, so that
    many retries that failed together do not come back in the same instant."""
    return tenacity.wait_exponential(multiplier=base, max=cap) + tenacity.wait_random(
        0, base if jitter is None else jitter
    )


_NO_RETRY = tenacity.Retrying()


def wait_seconds(strategy: wait_base, attempt: int) -> float:
    """The wait ``strategy`` gives after the ``attempt``-th failure (0 or less: no wait)."""
    if attempt <= 0:
        return 0.0
    state = tenacity.RetryCallState(_NO_RETRY, None, (), {})
    state.attempt_number = attempt
    return float(strategy(state))


class FailureBackoff:
    """Failures counted per key; each failure's wait comes from a tenacity wait strategy.

    ``when(key)`` counts one more failure of ``key`` and returns how long to wait before trying
    it again; ``forget(key)`` (after a success) starts the key over. Thread-safe.
    """

    def __init__(self, strategy: wait_base) -> None:
        self.strategy = strategy
        self._failures: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def when(self, key: Hashable = None) -> float:
        with self._lock:
            count = self._failures.get(key, 0) + 1
            self._failures[key] = count
        return wait_seconds(self.strategy, count)

    def forget(self, key: Hashable = None) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def failures(self, key: Hashable = None) -> int:
        with self._lock:
            return self._failures.get(key, 0)
