"""Group commit of the GM API's applies: concurrent ``POST /api/v1/apply`` requests share one store commit.

Who calls it: ``GMApi.apply`` (``cloud/api_server.py``), on the HTTP server's request threads,
after it has validated the request's object (a validation error never gets here: it is that
request's own answer).

Leader and followers: a request queues its object and, if no other request is writing, becomes
the writer: it takes every object queued so far (at most ``GROUP_MAX``) and writes them in one
transaction of the SQLite store, each in a savepoint of its own (one that fails rolls back
alone and is that request's error; the others go on), then commits once (one fsync for the
group) and wakes the requests of the group with their own answers. Requests that arrive while it
writes wait for the next group, which the first of them writes. Idle, a group is one request: no
timer, no wait for company. No request is answered before its object is committed; a failed
commit is the error of every request of its group.

The answer is the same as one apply alone: the object as stored and what the apply did
(``created``, ``configured``, ``unchanged``), compared with the object as it was right before
it inside the same transaction.

On a store without transactions (Kubernetes: ``kubectl`` writes there, and the API is probes
only) applies are written one at a time.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from lifelong.cloud.stores.base import Object, ResourceStore
from lifelong.cloud.stores.sqlite import SqliteStore

GROUP_MAX = 256
"""The most applies one commit takes (the store's lock is held while the group is written)."""


@dataclass(slots=True)
class _Pending:
    key: tuple[str, str, str]
    desired: Object
    done: bool = False
    before: Object | None = None
    stored: Object | None = None
    error: BaseException | None = None


class GroupCommit:
    """Writes applies to ``store``, many requests per commit (see the module docstring)."""

    def __init__(self, store: ResourceStore, *, limit: int = GROUP_MAX) -> None:
        self.store = store
        self.limit = limit
        self._db = store.db if isinstance(store, SqliteStore) else None
        self._cv = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False
        self._pending = 0
        self.groups = 0
        """Commits made (tests and the benchmark read it: applies per commit)."""

    def apply(self, key: tuple[str, str, str], desired: Object) -> tuple[Object | None, Object]:
        """Store ``desired`` (the object ``key`` names); the object before (None: it is new) and
        as stored. Raises what the store raised for this object (or for its group's commit)."""
        item = _Pending(key, desired)
        with self._cv:
            self._queue.append(item)
            self._pending += 1
            while not item.done:
                if self._writing:
                    self._cv.wait()
                    continue
                self._writing = True
                group = self._queue[: self.limit]
                del self._queue[: self.limit]
                self._cv.release()
                try:
                    self._write(group)
                finally:
                    self._cv.acquire()
                    self._writing = False
                    for pending in group:
                        pending.done = True
                    self._pending -= len(group)
                    self._cv.notify_all()
        if item.error is not None:
            raise item.error
        assert item.stored is not None
        return item.before, item.stored

    def pending(self) -> int:
        """Applies handed in and not answered yet (queued, or in the group being written)."""
        with self._cv:
            return self._pending

    def _transaction(self) -> AbstractContextManager[Any]:
        return self._db.transaction() if self._db is not None else nullcontext()

    def _write(self, group: list[_Pending]) -> None:
        """Write ``group`` in one transaction, each object in a savepoint of its own; set each
        one's answer only once the transaction committed."""
        answers: list[tuple[_Pending, Object | None, Object | None, BaseException | None]] = []
        try:
            with self._transaction():
                for pending in group:
                    try:
                        with self._transaction():
                            before = self.store.get(*pending.key)
                            stored = self.store.apply(pending.desired)
                    except Exception as exc:  # this request's answer, the others go on
                        answers.append((pending, None, None, exc))
                    else:
                        answers.append((pending, before, stored, None))
        except Exception as exc:  # the commit failed: nothing of the group is stored
            for pending in group:
                pending.error = exc
            return
        finally:
            self.groups += 1
        for pending, was, now, error in answers:
            pending.before, pending.stored, pending.error = was, now, error
