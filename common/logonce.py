"""Log a recurring problem once: which items were already reported, and for which reason.

Who uses it: every loop over many items that logs a bad one once instead of at every pass (the
LC's ``ItemFailures`` in ``edge/metrics.py``), the GM's intake (one warning per node and reason
of rejection until the node's next hello, ``cloud/intake.py``) and the GM's store watch (one
error per refused stored object and reason, ``cloud/service.py``). Counting stays with the
caller; this only remembers what was said.

Items are grouped by a *scope* (a loop's name, a node) so that a whole scope can be forgotten
at once (a node's new connection). Bounded: past ``limit`` scopes it starts over, which at worst
logs an item once more. Thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable


class LogOnce:
    """Remembers the reason each (scope, key) was last reported for."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._seen: dict[Hashable, dict[Hashable, str]] = {}
        self._lock = threading.Lock()

    def first(self, scope: Hashable, key: Hashable, reason: str = "") -> bool:
        """True (and remembered) when ``key`` of ``scope`` was not reported yet for ``reason``:
        the caller logs it now. False when it was: the caller stays quiet."""
        with self._lock:
            keys = self._seen.get(scope)
            if keys is None:
                if len(self._seen) >= self.limit:
                    self._seen.clear()
                keys = self._seen[scope] = {}
            if keys.get(key) == reason:
                return False
            keys[key] = reason
            return True

    def forget(self, scope: Hashable, key: Hashable) -> None:
        """``key`` of ``scope`` is fine again: its next problem is reported. Cheap when nothing
        was ever reported (it is called for every good item of a loop)."""
        if self._seen:
            with self._lock:
                keys = self._seen.get(scope)
                if keys is not None:
                    keys.pop(key, None)

    def forget_scope(self, scope: Hashable) -> None:
        """Everything of ``scope`` is reported again (a node's new connection)."""
        with self._lock:
            self._seen.pop(scope, None)
