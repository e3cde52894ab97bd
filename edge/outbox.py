"""The durable outbox: every upstream report is committed here before it is published.

Called by the manager, the dataset monitor, the worker runtime and the worker API
(``append``, usually inside ``Store.tx()`` together with the state change the report
announces), by the session's publisher thread (``due`` / ``mark_sent`` / ``reset_inflight``)
and by the session's downstream handler (``ack``).

Rules (docs/protocol.md, "Upstream"):

* A report gets a per-node sequence number (SQLite AUTOINCREMENT, never reused) that is
  unique within the outbox ``epoch`` (a random id made with the database).
* It stays until the GM acknowledges its seq; unacknowledged reports are resent after a
  reconnect (``reset_inflight``) or after ``ack_timeout`` seconds.
* At most ``window`` reports are in flight (published, not yet acknowledged).
* The outbox holds at most ``max_depth`` reports. Policy when full:

  1. reports with a coalesce key (a Dataset's ``numberOfSamples``) always replace the older
     report with the same key, so a dataset never holds more than one row; a new count whose
     key has no row yet is *refused* when the outbox is full (counted in ``dropped``; the
     dataset monitor reports again at its next poll, so nothing but an intermediate count is
     lost);
  2. any other report (conditions, worker phases, worker info) is never dropped: ``append``
     raises :class:`OutboxFull` (counted in ``refused``) and the caller keeps the change that
     the report announces pending and tries again later, while monitoring goes on.

SIGKILL safety comes from SQLite's WAL: a report is either committed (and will be sent) or
not appended at all (and its caller did not record the change either, same transaction).

The rows live in the outbox table of the LC's database; its SQL is in the repository
``OutboxTable`` (``db.py``), this class keeps the policy and the in-flight bookkeeping. The
depth is not counted on each append: the ``counters`` row ``outbox`` is kept by triggers on
every insert and delete of the outbox table, so it commits or rolls back with them, and is
counted anew whenever the database is opened. An append is a savepoint inside the caller's
transaction: a coalescing report refused as the outbox is full leaves the older count queued
even when the caller's transaction goes on.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from lifelong.common.errors import LifelongError
from lifelong.edge.db import Entry, OutboxStats, Store

__all__ = ["Entry", "Outbox", "OutboxFull", "OutboxStats"]


class OutboxFull(LifelongError):
    """The outbox is at its bound and the report may not be dropped: try again later."""


class Outbox:
    """The outbox table of a :class:`Store`, with the in-flight bookkeeping of this process."""

    def __init__(
        self,
        store: Store,
        *,
        max_depth: int = 100_000,
        window: int = 200,
        ack_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_depth < 1 or window < 1:
            raise ValueError("outbox max_depth and window must be at least 1")
        self.store = store
        self.table = store.outbox_table
        self.epoch = store.epoch
        self.max_depth = max_depth
        self.window = window
        self.ack_timeout = ack_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._inflight: dict[int, float] = {}  # seq -> clock() when published
        self._sent: set[int] = set()  # seqs published at least once by this process
        # Every report with a seq <= _cursor is in flight or gone, so ``due`` reads only the
        # rows after it (plus in-flight ones above it): O(window), not O(depth).
        self._cursor = 0
        self._resets = 0  # reset_inflight calls: a list ``due`` made before one is stale
        self.wakeup = threading.Event()  # set when there may be something to publish
        self.appended = 0
        self.sent = 0
        self.resent = 0
        self.acked = 0
        self.coalesced = 0
        self.dropped = 0
        self.refused = 0

    # -- appending ------------------------------------------------------------------------
    def append(
        self, kind: str, ns: str, name: str, body: dict[str, Any], *, coalesce_key: str | None = None
    ) -> int | None:
        """Commit one report; return its seq. ``None`` means a coalescible report was refused
        because the outbox is full (counted); ``OutboxFull`` is raised for any other report."""
        data = json.dumps(body, separators=(",", ":"))
        inserted = self.table.insert(
            kind, ns, name, data, coalesce_key=coalesce_key, max_depth=self.max_depth
        )
        if inserted is None:
            if coalesce_key is not None:
                self.dropped += 1
                return None
            self.refused += 1
            raise OutboxFull(
                f"outbox full ({self.table.depth()} reports): {kind} {ns}/{name} not queued; will retry"
            )
        seq, replaced = inserted
        if replaced:
            with self._lock:
                for old in replaced:
                    self._inflight.pop(old, None)
                    self._sent.discard(old)
            self.coalesced += len(replaced)
        self.appended += 1
        self.wakeup.set()
        return seq

    def append_all(self, reports: list[tuple[str, str, str, dict[str, Any]]]) -> list[int]:
        """Commit several reports (kind, ns, name, body), none coalescible, all or none: the
        room is checked first, inside the caller's transaction (which holds the database's
        lock), so a full outbox raises ``OutboxFull`` (counted once in ``refused``) before any
        is appended. Used by the worker API for the chunks of one post of unseen samples."""
        with self.store.tx():
            depth = self.table.depth()
            if depth + len(reports) > self.max_depth:
                self.refused += 1
                raise OutboxFull(
                    f"outbox full ({depth} of {self.max_depth} reports): {len(reports)} reports not queued"
                )
            seqs = []
            for kind, ns, name, body in reports:
                seq = self.append(kind, ns, name, body)
                assert seq is not None  # not coalescible: None is never returned
                seqs.append(seq)
            return seqs

    # -- publishing -----------------------------------------------------------------------
    def due(self) -> list[Entry]:
        """Reports to publish now: unsent or timed out, oldest first, within the window."""
        now = self._clock()
        with self._lock:
            for seq, sent_at in list(self._inflight.items()):
                if now - sent_at >= self.ack_timeout:
                    del self._inflight[seq]
                    self._cursor = min(self._cursor, seq - 1)
            room = self.window - len(self._inflight)
            if room <= 0:
                return []
            after = self._cursor
            skip = {seq for seq in self._inflight if seq > after}
        out = [e for e in self.table.after(after, room + len(skip)) if e.seq not in skip]
        return out[:room]

    @property
    def resets(self) -> int:
        """How many times everything unacknowledged was made due again (``reset_inflight``):
        the publisher reads it before ``due`` and hands it to ``mark_sent``."""
        with self._lock:
            return self._resets

    def mark_sent(self, seq: int, *, resets: int | None = None) -> bool:
        """Record that ``seq`` is being published now. With ``resets`` (as read before the
        ``due`` that listed ``seq``): False, and nothing recorded, if ``reset_inflight`` ran
        since. That list is stale: a report it skipped as in flight is due again, and marking a
        later one would move the cursor past it, where only the next reconnect would find it."""
        with self._lock:
            if resets is not None and resets != self._resets:
                return False
            self._inflight[seq] = self._clock()
            self._cursor = max(self._cursor, seq)
            if seq in self._sent:
                self.resent += 1
            else:
                self._sent.add(seq)
                self.sent += 1
        return True

    def unmark(self, seq: int) -> None:
        """A publish did not go out (connection lost): the report is due again at once."""
        with self._lock:
            self._inflight.pop(seq, None)
            self._cursor = min(self._cursor, seq - 1)

    def reset_inflight(self) -> None:
        """After a reconnect: everything unacknowledged is due again."""
        with self._lock:
            self._inflight.clear()
            self._cursor = 0
            self._resets += 1
        self.wakeup.set()

    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    # -- acknowledgements ---------------------------------------------------------------------
    def ack(self, epoch: str, seqs: list[int]) -> int:
        """The GM applied these reports: forget them. Acks of another epoch are ignored."""
        if epoch != self.epoch or not seqs:
            return 0
        clean = [int(s) for s in seqs if isinstance(s, int) and not isinstance(s, bool)]
        deleted = self.table.delete(clean)
        with self._lock:
            for seq in clean:
                self._inflight.pop(seq, None)
                self._sent.discard(seq)
        self.acked += deleted
        self.wakeup.set()
        return deleted

    def drop_unsendable(self, seq: int) -> None:
        """A report that can never be published (over the payload limit): delete it, counted
        in ``dropped`` and logged by the caller."""
        self.table.delete([seq])
        with self._lock:
            self._inflight.pop(seq, None)
        self.dropped += 1

    # -- state ----------------------------------------------------------------------------
    def depth(self) -> int:
        """The number of queued reports (a counter, not a count of the table)."""
        return self.table.depth()

    def stats(self) -> OutboxStats:
        return self.table.stats()

    def hello_state(self) -> dict[str, Any]:
        """Depth, lowest seq and next seq: no scan of the table (min(seq) is the rowid's)."""
        depth, low, next_seq = self.table.bounds()
        return {"depth": depth, "lowSeq": low, "nextSeq": next_seq}
