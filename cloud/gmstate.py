"""The GM's own bookkeeping, in SQLite: nodes, applied upstream reports, per-node downstream.

Who uses it: ``cloud/intake.py`` (dedupe of reports by (node, epoch, seq), hello), and
``cloud/delivery.py`` (what each node should hold, what it acknowledged, resend backoff).
It survives a GM restart, which is what makes a resent report idempotent across restarts and
lets a restarted GM keep resending what a node never acknowledged.

Tables:

``nodes``       node, online, agent, epoch, boot, last_hello, last_seen, and the outbox state the
                node's last hello reported (outbox_depth, outbox_low, outbox_next; NULL if none).
                ``online`` is this GM's view since its start: the service marks every node
                offline when it starts acting (``all_offline``); a hello, or a live (not
                retained) ``online`` presence, sets it again (``cloud/intake.py``)
``applied``     (node, epoch, seq) of every upstream report applied; pruned below a hello's lowSeq
``downstream``  (node, kind, ns, name) -> op (upsert|delete), rv, the object sent, acked_rv,
                last_sent, attempts. A row is what the node should hold (upsert) or a tombstone
                (delete) until the node acknowledges it.
``worker_info`` the last body each worker posted to its LC (``workerInfo`` reports)

Bounds (docs/reliability.md, "Bounds"): ``applied`` holds at most ``APPLIED_MAX_PER_NODE`` records
per node and none older than ``APPLIED_KEEP_SECONDS``; ``worker_info`` at most
``WORKER_INFO_MAX_PER_JOB`` workers per job. ``nodes`` gets a row only from a hello
(``cloud/intake.py`` bounds how many); ``downstream`` rows come from the API's objects, never from
what a node sends. What a bound forgets is reported to ``on_forgotten(what, reason, count)``
(the intake counts it in the GM's metrics).

Thread-safe: one :class:`~lifelong.common.sqlite.Database` (one connection behind a lock);
``transaction()`` groups calls into one commit and nests (docs/architecture.md, "Storage").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.common.sqlite import Database

APPLIED_KEEP_SECONDS = 7 * 24 * 3600.0
"""How long an applied (node, epoch, seq) is remembered when no hello prunes it first."""
APPLIED_MAX_PER_NODE = 200_000
"""Applied records kept per node (its current epoch; a hello forgets the others): the lowest
seqs beyond go. Twice the LC's default outbox bound, so every report a node may still resend
is remembered; a resend older than that is still caught by the state machine."""
WORKER_INFO_MAX_PER_JOB = 1000
"""Workers' infos kept per job (a long-lived job gets three new worker names a round): the
oldest posted go first."""
_TRIM_EVERY = 1000
"""Records added for one node between two checks of its bound."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY, online INTEGER NOT NULL DEFAULT 0, agent TEXT NOT NULL DEFAULT '',
    epoch TEXT NOT NULL DEFAULT '', boot TEXT NOT NULL DEFAULT '',
    last_hello REAL NOT NULL DEFAULT 0, last_seen REAL NOT NULL DEFAULT 0,
    outbox_depth INTEGER, outbox_low INTEGER, outbox_next INTEGER
)""",
    """CREATE TABLE IF NOT EXISTS applied (
    node TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (node, epoch, seq)
)""",
    """CREATE TABLE IF NOT EXISTS downstream (
    node TEXT NOT NULL, kind TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
    op TEXT NOT NULL, rv TEXT NOT NULL, object TEXT, acked_rv TEXT,
    last_sent REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node, kind, ns, name)
)""",
    "CREATE INDEX IF NOT EXISTS downstream_by_key ON downstream (kind, ns, name)",
    """CREATE TABLE IF NOT EXISTS worker_info (
    ns TEXT NOT NULL, job TEXT NOT NULL, worker TEXT NOT NULL, info TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (ns, job, worker)
)""",
)

_NODE_COLUMNS_ADDED = (
    ("outbox_depth", "INTEGER"),
    ("outbox_low", "INTEGER"),
    ("outbox_next", "INTEGER"),
)
"""Columns added to ``nodes`` after its first version: added to an older database on open."""

_NODE_SELECT = (
    "SELECT node, online, agent, epoch, boot, last_hello, last_seen, outbox_depth, outbox_low, outbox_next "
    "FROM nodes"
)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node: str
    online: bool
    agent: str
    epoch: str
    boot: str
    last_hello: float
    last_seen: float
    outbox_depth: int | None = None
    """Reports waiting in the node's outbox, as of its last hello (None: it did not say)."""
    outbox_low: int | None = None
    outbox_next: int | None = None


@dataclass(frozen=True, slots=True)
class DownRow:
    """One resource as one node should hold it (or a tombstone)."""

    node: str
    kind: str
    ns: str
    name: str
    op: str  # "upsert" | "delete"
    rv: str
    object_json: str | None  # the object as sent, parsed only when asked for (``object``)
    acked_rv: str | None
    last_sent: float
    attempts: int

    @property
    def object(self) -> dict[str, Any] | None:
        return None if self.object_json is None else json.loads(self.object_json)

    @property
    def acked(self) -> bool:
        return self.acked_rv == self.rv

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.ns, self.name)


class GMState:
    """The repository of the GM's bookkeeping tables.

    ``path`` is the database file (``:memory:`` for tests) or an open
    :class:`~lifelong.common.sqlite.Database`. Every method commits on its own, or joins the
    caller's ``with state.transaction():``."""

    def __init__(self, path: str | Path | Database) -> None:
        # NORMAL in WAL mode survives any process crash; a power cut may lose the last
        # records, which costs at most a duplicate apply (caught by the state machine) or a
        # resend (repaired by the next hello's diff).
        self.db = Database.of(path, synchronous="normal", readers=True)
        self.path = str(self.db.path)
        with self.db.transaction():
            self.db.execute_all(_SCHEMA)
            self._migrate()
        self._applied_since_prune = 0
        self._added_since_trim: dict[str, int] = {}  # node -> records added since its last check
        self.applied_max_per_node = APPLIED_MAX_PER_NODE
        self.worker_info_max_per_job = WORKER_INFO_MAX_PER_JOB
        self.on_forgotten: Callable[[str, str, int], None] = lambda what, reason, count: None
        """Told what a bound forgot: ("applied", "age"|"count", n) or ("worker_info", "count", n)."""
        # (node, epoch) -> a seq at least as high as every applied record of it: a report above
        # it is new without a database read (nearly every report: seqs grow). Records are only
        # ever added above it (it is raised first, see mark_applied_many) or deleted, so it stays
        # an upper bound. One entry per node (other epochs go at its hello).
        self._applied_top: dict[tuple[str, str], int] = {}  # under the database's lock

    def _migrate(self) -> None:
        """Add the columns a database made by an older GM lacks (SQLite has no ADD COLUMN IF NOT EXISTS)."""
        have = {str(row[1]) for row in self.db.fetchall("PRAGMA table_info(nodes)")}
        for column, decl in _NODE_COLUMNS_ADDED:
            if column not in have:
                self.db.execute(f"ALTER TABLE nodes ADD COLUMN {column} {decl}")

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> AbstractContextManager[Database]:
        """Group the calls made inside into one transaction (one commit). It nests: a method
        that opens its own (``hello``, ``mark_applied_many``) joins it as a savepoint."""
        return self.db.transaction()

    # -- nodes -----------------------------------------------------------------------------
    def hello(
        self,
        node: str,
        *,
        agent: str,
        epoch: str,
        boot: str,
        low_seq: int | None,
        depth: int | None = None,
        next_seq: int | None = None,
    ) -> NodeInfo | None:
        """Record a hello; forget applied seqs below ``low_seq`` (and of other epochs).

        ``depth``, ``low_seq`` and ``next_seq`` are the node's outbox as the hello reported it;
        kept as they were at this hello (the GM learns them only from hellos).

        Returns the node as it was before (None if never seen).
        """
        now = time.time()
        with self.db.transaction():
            before = self.node(node)
            self.db.execute(
                "INSERT INTO nodes (node, online, agent, epoch, boot, last_hello, last_seen, "
                "outbox_depth, outbox_low, outbox_next) "
                "VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(node) DO UPDATE SET online=1, "
                "agent=excluded.agent, epoch=excluded.epoch, boot=excluded.boot, "
                "last_hello=excluded.last_hello, last_seen=excluded.last_seen, "
                "outbox_depth=excluded.outbox_depth, outbox_low=excluded.outbox_low, "
                "outbox_next=excluded.outbox_next",
                (node, agent, epoch, boot, now, now, depth, low_seq, next_seq),
            )
            self.db.execute("DELETE FROM applied WHERE node=? AND epoch!=?", (node, epoch))
            with self.db.locked():
                for key in [k for k in self._applied_top if k[0] == node and k[1] != epoch]:
                    del self._applied_top[key]
            if low_seq is not None:
                self.db.execute(
                    "DELETE FROM applied WHERE node=? AND epoch=? AND seq<?", (node, epoch, low_seq)
                )
        return before

    def set_online(self, node: str, online: bool, agent: str = "") -> None:
        self.db.execute(
            "INSERT INTO nodes (node, online, agent, last_seen) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(node) DO UPDATE SET online=excluded.online, last_seen=excluded.last_seen, "
            "agent=CASE WHEN excluded.agent != '' THEN excluded.agent ELSE nodes.agent END",
            (node, int(online), agent, time.time()),
        )

    def all_offline(self) -> int:
        """Mark every node offline (the GM's start: only a hello or a live presence after it
        says a node is online); returns how many were online."""
        return self.db.execute("UPDATE nodes SET online=0 WHERE online!=0").rowcount

    def forget_node(self, node: str) -> bool:
        """Forget ``node`` (``lifelong delete node``), in one transaction: its row, its applied
        report records and its delivery tombstones go; what it should hold stays (the resources
        naming it do), unacknowledged and never sent, so its next hello's diff sends it all.
        False if the GM did not know the node."""
        with self.db.transaction():
            known = self.db.execute("DELETE FROM nodes WHERE node=?", (node,)).rowcount > 0
            self._added_since_trim.pop(node, None)
            self.db.execute("DELETE FROM applied WHERE node=?", (node,))
            with self.db.locked():
                for key in [k for k in self._applied_top if k[0] == node]:
                    del self._applied_top[key]
            self.db.execute("DELETE FROM downstream WHERE node=? AND op='delete'", (node,))
            self.db.execute(
                "UPDATE downstream SET acked_rv=NULL, last_sent=0, attempts=0 WHERE node=?", (node,)
            )
        return known

    def known(self, node: str) -> bool:
        """Whether ``node`` has said hello (or been seen online) since the GM last forgot it."""
        info = self.node(node)
        return info is not None and (info.last_hello > 0 or info.online)

    def node(self, node: str) -> NodeInfo | None:
        row = self.db.fetchone(_NODE_SELECT + " WHERE node=?", (node,))
        return None if row is None else _node(row)

    def nodes(self) -> list[NodeInfo]:
        return [_node(r) for r in self.db.fetchall(_NODE_SELECT + " ORDER BY node")]

    # -- upstream dedupe -------------------------------------------------------------------
    def _top(self, node: str, epoch: str) -> int:
        """The applied-seq upper bound of (node, epoch); call with the database's lock held."""
        top = self._applied_top.get((node, epoch))
        if top is None:
            row = self.db.fetchone("SELECT max(seq) FROM applied WHERE node=? AND epoch=?", (node, epoch))
            top = -1 if row is None or row[0] is None else int(row[0])
            self._applied_top[(node, epoch)] = top
        return top

    def is_applied(self, node: str, epoch: str, seq: int) -> bool:
        with self.db.locked():
            if seq > self._top(node, epoch):
                return False
        row = self.db.fetchone("SELECT 1 FROM applied WHERE node=? AND epoch=? AND seq=?", (node, epoch, seq))
        return row is not None

    def mark_applied_many(self, node: str, epoch: str, seqs: list[int]) -> None:
        """Record several applied reports in one transaction."""
        if seqs:
            # Raised before the records exist, so that no reader can see a record above it.
            with self.db.locked():
                self._applied_top[(node, epoch)] = max(self._top(node, epoch), *seqs)
        now = time.time()
        with self.db.transaction():
            self.db.executemany(
                "INSERT OR IGNORE INTO applied (node, epoch, seq, at) VALUES (?, ?, ?, ?)",
                [(node, epoch, seq, now) for seq in seqs],
            )
            self._prune_applied(len(seqs), now)
            self._trim_applied(node, epoch, len(seqs))

    def mark_applied(self, node: str, epoch: str, seq: int) -> None:
        self.mark_applied_many(node, epoch, [seq])

    def _prune_applied(self, added: int, now: float) -> None:
        self._applied_since_prune += added
        if self._applied_since_prune >= 1000:
            # A node that stays connected sends no hello (no lowSeq): records older than
            # APPLIED_KEEP_SECONDS go anyway. A resend that old is still caught by the state
            # machine (duplicate conditions) and by the round check.
            self._applied_since_prune = 0
            aged = self.db.execute("DELETE FROM applied WHERE at < ?", (now - APPLIED_KEEP_SECONDS,)).rowcount
            if aged > 0:
                self.on_forgotten("applied", "age", aged)

    def _trim_applied(self, node: str, epoch: str, added: int) -> None:
        """Keep at most ``applied_max_per_node`` records of ``node`` (checked every ``_TRIM_EVERY``
        records it adds): the lowest seqs go."""
        since = self._added_since_trim.get(node, 0) + added
        if since < min(_TRIM_EVERY, self.applied_max_per_node):
            self._added_since_trim[node] = since
            return
        self._added_since_trim.pop(node, None)
        row = self.db.fetchone(
            "SELECT seq FROM applied WHERE node=? AND epoch=? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (node, epoch, self.applied_max_per_node),
        )
        if row is None:
            return
        trimmed = self.db.execute(
            "DELETE FROM applied WHERE node=? AND epoch=? AND seq<=?", (node, epoch, row[0])
        ).rowcount
        if trimmed > 0:
            self.on_forgotten("applied", "count", trimmed)

    def applied_count(self, node: str) -> int:
        row = self.db.fetchone("SELECT COUNT(*) FROM applied WHERE node=?", (node,))
        return int(row[0]) if row else 0

    # -- downstream ------------------------------------------------------------------------
    def down_rows(
        self,
        node: str | None = None,
        key: tuple[str, str, str] | None = None,
        *,
        unacked: bool = False,
        kind: str | None = None,
    ) -> list[DownRow]:
        sql = "SELECT node, kind, ns, name, op, rv, object, acked_rv, last_sent, attempts FROM downstream"
        where: list[str] = ["(acked_rv IS NULL OR acked_rv != rv)"] if unacked else []
        args: list[Any] = []
        if node is not None:
            where.append("node=?")
            args.append(node)
        if key is not None:
            where.append("kind=? AND ns=? AND name=?")
            args.extend(key)
        if kind is not None:
            where.append("kind=?")
            args.append(kind)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_down(r) for r in self.db.fetchall(sql + " ORDER BY node, kind, ns, name", args)]

    def unacked_online(self) -> list[tuple[str, float, int]]:
        """(node, last sent, attempts) of every unacknowledged row of an online node: what the
        resend loop looks through each tick, without the objects (a row's object is read only
        when it is resent) and without the rows of offline nodes (a hello brings those)."""
        rows = self.db.fetchall(
            "SELECT d.node, d.last_sent, d.attempts FROM downstream d JOIN nodes n ON n.node = d.node"
            " WHERE n.online = 1 AND (d.acked_rv IS NULL OR d.acked_rv != d.rv)"
        )
        return [(str(node), float(last), int(attempts)) for node, last, attempts in rows]

    def set_down(
        self, node: str, key: tuple[str, str, str], op: str, rv: str, obj: dict[str, Any] | None
    ) -> bool:
        """Record what ``node`` should hold for ``key``; True if it differs from before (resend)."""
        kind, ns, name = key
        text = None if obj is None else json.dumps(obj, separators=(",", ":"), sort_keys=True)
        with self.db.transaction():
            row = self.db.fetchone(
                "SELECT op, rv FROM downstream WHERE node=? AND kind=? AND ns=? AND name=?",
                (node, kind, ns, name),
            )
            if row is not None and row[0] == op and row[1] == rv:
                return False
            self.db.execute(
                "INSERT OR REPLACE INTO downstream (node, kind, ns, name, op, rv, object, acked_rv, "
                "last_sent, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 0, 0)",
                (node, kind, ns, name, op, rv, text),
            )
        return True

    def mark_sent(self, node: str, key: tuple[str, str, str], rv: str) -> None:
        self.db.execute(
            "UPDATE downstream SET last_sent=?, attempts=attempts+1 "
            "WHERE node=? AND kind=? AND ns=? AND name=? AND rv=?",
            (time.time(), node, *key, rv),
        )

    def reset_backoff(self, node: str) -> None:
        self.db.execute("UPDATE downstream SET last_sent=0, attempts=0 WHERE node=?", (node,))

    def ack_down(self, node: str, key: tuple[str, str, str], rv: str, op: str) -> bool:
        """The node stored (or ignored as stale) ``rv`` of ``key``. Tombstones go away once acked."""
        with self.db.transaction():
            row = self.db.fetchone(
                "SELECT op, rv FROM downstream WHERE node=? AND kind=? AND ns=? AND name=?", (node, *key)
            )
            if row is None or row[1] != rv:
                return False
            if row[0] == "delete":
                self.db.execute(
                    "DELETE FROM downstream WHERE node=? AND kind=? AND ns=? AND name=?", (node, *key)
                )
            else:
                self.db.execute(
                    "UPDATE downstream SET acked_rv=? WHERE node=? AND kind=? AND ns=? AND name=?",
                    (rv, node, *key),
                )
        return True

    def drop_down(self, node: str, key: tuple[str, str, str]) -> None:
        self.db.execute("DELETE FROM downstream WHERE node=? AND kind=? AND ns=? AND name=?", (node, *key))

    def unacked_counts(self) -> dict[str, int]:
        rows = self.db.fetchall(
            "SELECT node, COUNT(*) FROM downstream WHERE acked_rv IS NULL OR acked_rv != rv GROUP BY node"
        )
        return {str(n): int(c) for n, c in rows}

    # -- worker info -----------------------------------------------------------------------
    def put_worker_info(self, ns: str, job: str, worker: str, info: Any) -> bool:
        """Keep a worker's last posted info; False when it already held exactly this (a report
        applied again after a GM crash between applying it and recording its seq)."""
        data = json.dumps(info, separators=(",", ":"))
        with self.db.transaction():
            row = self.db.fetchone(
                "SELECT info FROM worker_info WHERE ns=? AND job=? AND worker=?", (ns, job, worker)
            )
            if row is not None and row[0] == data:
                return False
            self.db.execute(
                "INSERT OR REPLACE INTO worker_info (ns, job, worker, info, at) VALUES (?, ?, ?, ?, ?)",
                (ns, job, worker, data, time.time()),
            )
            if row is None:
                self._trim_worker_info(ns, job)
            return True

    def _trim_worker_info(self, ns: str, job: str) -> None:
        """Keep the ``worker_info_max_per_job`` most recently posted workers of a job."""
        row = self.db.fetchone("SELECT COUNT(*) FROM worker_info WHERE ns=? AND job=?", (ns, job))
        over = (int(row[0]) if row else 0) - self.worker_info_max_per_job
        if over > 0:
            self.db.execute(
                "DELETE FROM worker_info WHERE rowid IN (SELECT rowid FROM worker_info WHERE ns=? "
                "AND job=? ORDER BY at, worker LIMIT ?)",
                (ns, job, over),
            )
            self.on_forgotten("worker_info", "count", over)

    def worker_info(self, ns: str, job: str) -> dict[str, Any]:
        rows = self.db.fetchall(
            "SELECT worker, info FROM worker_info WHERE ns=? AND job=? ORDER BY worker", (ns, job)
        )
        return {str(w): json.loads(i) for w, i in rows}

    def forget_job(self, ns: str, job: str) -> None:
        self.db.execute("DELETE FROM worker_info WHERE ns=? AND job=?", (ns, job))


def _node(row: Iterable[Any]) -> NodeInfo:
    node, online, agent, epoch, boot, last_hello, last_seen, depth, low, nxt = row
    return NodeInfo(
        str(node),
        bool(online),
        str(agent),
        str(epoch),
        str(boot),
        float(last_hello),
        float(last_seen),
        None if depth is None else int(depth),
        None if low is None else int(low),
        None if nxt is None else int(nxt),
    )


def _down(row: Iterable[Any]) -> DownRow:
    node, kind, ns, name, op, rv, obj, acked, last_sent, attempts = row
    return DownRow(
        str(node),
        str(kind),
        str(ns),
        str(name),
        str(op),
        str(rv),
        None if obj is None else str(obj),
        None if acked is None else str(acked),
        float(last_sent),
        int(attempts),
    )
