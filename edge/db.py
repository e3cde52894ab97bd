"""The LC's local state: one SQLite database (WAL) under the state directory, and the
repositories of its tables (the only SQL of ``edge/``).

Used by every edge component through one :class:`Store` (one
:class:`~lifelong.common.sqlite.Database`: one connection, one lock): the bus session stores
desired resources and tombstones, the manager its per-job progress, the worker runtime its
processes, the worker API the reports it keeps for unknown jobs; the outbox (``outbox.py``)
keeps its queued reports through :class:`OutboxTable` (``store.outbox_table``). Sharing one
database lets a caller commit a progress change and the report that announces it in one
transaction (``with store.tx():``), so a SIGKILL can never leave one without the other.

Tables::

    meta(key, value)                      epoch (random id made with the DB), created
    resources(kind, ns, name, rv, obj)    what the GM wants this node to hold
    tombstones(kind, ns, name, rv)        the rv of deletions, so a late upsert is stale
    progress(ns, name, data)              per-job round, sample cursor, pools, acted conditions
    datasets(ns, name, data)              last counted / reported numberOfSamples, status
    workers(ns, name, data)               local worker processes (pid, start time, phase, ...)
    pending_info(id, ns, worker, job, body, ts)   worker-API posts not yet in the outbox
    labelled(ns, name, data)              per LabelledSamples batch: its intent (file size
                                          before, the bytes to append) or what was done at
                                          which rv (``edge/labelled.py``)
    labelled_ids(ns, dataset, id)         the sample ids appended to each Dataset's file
    outbox(seq, kind, ns, name, body, ckey, ts)   see outbox.py
    counters(key, n)                      'outbox': the number of rows of outbox, kept by two
                                          triggers in the transaction of every insert and
                                          delete, and counted again at every open
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from lifelong.common.sqlite import Database, moved_aside

ModelT = TypeVar("ModelT")

__all__ = ["Entry", "OutboxStats", "OutboxTable", "Store", "moved_aside", "rv_newer", "rv_older"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL, rv TEXT NOT NULL, obj TEXT NOT NULL,
    PRIMARY KEY (kind, ns, name))""",
    """CREATE TABLE IF NOT EXISTS tombstones (
    kind TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL, rv TEXT NOT NULL,
    PRIMARY KEY (kind, ns, name))""",
    """CREATE TABLE IF NOT EXISTS progress (ns TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (ns, name))""",
    """CREATE TABLE IF NOT EXISTS datasets (ns TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (ns, name))""",
    """CREATE TABLE IF NOT EXISTS workers (ns TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (ns, name))""",
    """CREATE TABLE IF NOT EXISTS pending_info (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ns TEXT NOT NULL, worker TEXT NOT NULL, job TEXT NOT NULL,
    body TEXT NOT NULL, ts REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS labelled (ns TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (ns, name))""",
    """CREATE TABLE IF NOT EXISTS labelled_ids (ns TEXT NOT NULL, dataset TEXT NOT NULL, id TEXT NOT NULL,
    PRIMARY KEY (ns, dataset, id)) WITHOUT ROWID""",
)

_OUTBOX_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
    body BLOB NOT NULL, ckey TEXT, ts REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS outbox_ckey ON outbox (ckey) WHERE ckey IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    """CREATE TRIGGER IF NOT EXISTS outbox_depth_ins AFTER INSERT ON outbox
    BEGIN UPDATE counters SET n = n + 1 WHERE key = 'outbox'; END""",
    """CREATE TRIGGER IF NOT EXISTS outbox_depth_del AFTER DELETE ON outbox
    BEGIN UPDATE counters SET n = n - 1 WHERE key = 'outbox'; END""",
)

_TABLES_BY_KEY = ("progress", "datasets", "workers", "labelled")

log = logging.getLogger("lifelong.edge.db")


def rv_newer(candidate: str, held: str | None) -> bool:
    """Is ``candidate`` newer than ``held``? Decimal versions compare as integers; any other
    version different from the held one counts as newer (docs/protocol.md)."""
    if held is None:
        return True
    if candidate.isdecimal() and held.isdecimal():
        return int(candidate) > int(held)
    return candidate != held


def rv_older(candidate: str, held: str) -> bool:
    """Strictly older (only decidable for decimal versions)."""
    return candidate.isdecimal() and held.isdecimal() and int(candidate) < int(held)


class Store:
    """The LC's local database and the repository of its tables but the outbox's.

    ``path`` is the database file, opened with ``recover_corrupt`` (a corrupt file is moved
    aside and a new one started, with a new outbox epoch: the GM resends the desired state),
    or an open :class:`~lifelong.common.sqlite.Database` (tests). Every method is thread-safe;
    each commits on its own, or joins the caller's ``with store.tx():``.
    """

    def __init__(self, path: Path | Database, *, sync: str = "full") -> None:
        self.db = Database.of(path, synchronous="full" if sync == "full" else "normal", recover_corrupt=True)
        self.path: Path = self.db.path
        self._changed_lock = threading.Lock()
        self._changed: dict[str, set[tuple[str, str]]] = {}  # kind -> (ns, name) put or deleted
        # (kind, ns, name) -> (rv, obj, model): the parse of the last version read through
        # ``parsed``, least recently remembered first; bounded by MODELS_LIMIT.
        self._models: dict[tuple[str, str, str], tuple[str, dict[str, Any], object]] = {}
        self._models_lock = threading.Lock()
        with self.db.transaction():
            self.db.execute_all(_SCHEMA)
            if self.db.fetchone("SELECT value FROM meta WHERE key='epoch'") is None:
                self.db.execute("INSERT INTO meta VALUES ('epoch', ?)", (secrets.token_hex(8),))
                self.db.execute("INSERT INTO meta VALUES ('created', ?)", (str(time.time()),))
            self.outbox_table = OutboxTable(self.db)
        row = self.db.fetchone("SELECT value FROM meta WHERE key='epoch'")
        assert row is not None
        self.epoch: str = str(row[0])
        if self.moved_aside is not None:
            log.warning(
                "local database %s started anew: new outbox epoch %s, the GM resends the desired state",
                self.path,
                self.epoch,
            )

    @property
    def moved_aside(self) -> Path | None:
        """Where a corrupt database was moved by this open (None if it was sound)."""
        return self.db.moved_aside

    def tx(self, *, lazy: bool = False) -> AbstractContextManager[Database]:
        """A transaction: the calls inside commit together, or not at all (it nests, see
        :meth:`Database.transaction`, also for ``lazy``). Used to commit a state change with the
        report that announces it, so a SIGKILL can never leave one without the other."""
        return self.db.transaction(lazy=lazy)

    def close(self) -> None:
        self.db.close()

    # -- resources ---------------------------------------------------------------------------
    def get_resource(self, kind: str, ns: str, name: str) -> tuple[str, dict[str, Any]] | None:
        row = self.db.fetchone(
            "SELECT rv, obj FROM resources WHERE kind=? AND ns=? AND name=?", (kind, ns, name)
        )
        return None if row is None else (str(row[0]), json.loads(row[1]))

    def held_rv(self, kind: str, ns: str, name: str) -> str | None:
        row = self.db.fetchone("SELECT rv FROM resources WHERE kind=? AND ns=? AND name=?", (kind, ns, name))
        return None if row is None else str(row[0])

    def tombstone_rv(self, kind: str, ns: str, name: str) -> str | None:
        row = self.db.fetchone("SELECT rv FROM tombstones WHERE kind=? AND ns=? AND name=?", (kind, ns, name))
        return None if row is None else str(row[0])

    def versions(self, kind: str) -> dict[tuple[str, str], str]:
        """(ns, name) -> rv of every resource of ``kind`` held, in (ns, name) order."""
        rows = self.db.fetchall("SELECT ns, name, rv FROM resources WHERE kind=? ORDER BY ns, name", (kind,))
        return {(str(ns), str(name)): str(rv) for ns, name, rv in rows}

    def take_changed(self, kind: str) -> set[tuple[str, str]]:
        """The (ns, name) of every resource of ``kind`` put or deleted since the last call (by
        this process; a change rolled back is listed too). One consumer per kind: the manager
        takes the jobs', so that a step reads only the jobs that changed."""
        with self._changed_lock:
            return self._changed.pop(kind, set())

    def _note_changed(self, kind: str, ns: str, name: str) -> None:
        with self._changed_lock:
            self._changed.setdefault(kind, set()).add((ns, name))

    def put_resource(self, kind: str, ns: str, name: str, rv: str, obj: dict[str, Any]) -> None:
        with self.db.transaction():
            self._note_changed(kind, ns, name)
            self.db.execute(
                "INSERT OR REPLACE INTO resources VALUES (?,?,?,?,?)", (kind, ns, name, rv, json.dumps(obj))
            )
            self.db.execute("DELETE FROM tombstones WHERE kind=? AND ns=? AND name=?", (kind, ns, name))

    MODELS_LIMIT = 256  # Datasets a node holds; past it the oldest go

    def _remember(self, key: tuple[str, str, str], rv: str, obj: dict[str, Any], model: object) -> None:
        with self._models_lock:
            self._models.pop(key, None)
            self._models[key] = (rv, obj, model)
            if len(self._models) > self.MODELS_LIMIT:
                del self._models[next(iter(self._models))]

    def parsed(
        self, kind: str, ns: str, name: str, parse: Callable[[dict[str, Any]], ModelT]
    ) -> tuple[str, dict[str, Any], ModelT] | None:
        """The held resource as (rv, obj, model), or None if none is held: ``parse(obj)`` of the
        held version, made once per version and kept. The version is always the database's;
        only the decode and the parse are saved. What ``parse`` raises goes to the caller, and
        nothing is kept.

        For the few objects many others depend on (Datasets: every job evaluated reads its
        own), not for jobs: a model kept is a few dozen objects that every full pass of the
        garbage collector walks. In a micro-benchmark, holding 3,000 parsed jobs made each
        further parse three times dearer (47 -> 141 us), and handing the session's parse of each
        new job to the manager made the session slower in the downstream benchmark than the
        parse it saved. The objects returned are shared between callers: read them, never
        change them."""
        key = (kind, ns, name)
        rv = self.held_rv(kind, ns, name)
        if rv is None:
            return None
        with self._models_lock:
            hit = self._models.get(key)
        if hit is not None and hit[0] == rv:
            return hit[0], hit[1], cast(ModelT, hit[2])  # what ``parse`` made of this version
        held = self.get_resource(kind, ns, name)
        if held is None:
            return None
        model = parse(held[1])
        self._remember(key, held[0], held[1], model)
        return held[0], held[1], model

    def delete_resource(self, kind: str, ns: str, name: str, rv: str | None) -> None:
        with self._models_lock:
            self._models.pop((kind, ns, name), None)
        with self.db.transaction():
            self._note_changed(kind, ns, name)
            self.db.execute("DELETE FROM resources WHERE kind=? AND ns=? AND name=?", (kind, ns, name))
            if rv is not None:
                self.db.execute("INSERT OR REPLACE INTO tombstones VALUES (?,?,?,?)", (kind, ns, name, rv))

    def resources(self, kind: str | None = None) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        if kind is None:
            rows = self.db.fetchall("SELECT kind, ns, name, rv, obj FROM resources ORDER BY kind, ns, name")
        else:
            rows = self.db.fetchall(
                "SELECT kind, ns, name, rv, obj FROM resources WHERE kind=? ORDER BY ns, name", (kind,)
            )
        return [(k, n, m, rv, json.loads(o)) for k, n, m, rv, o in rows]

    def held(self) -> list[dict[str, str]]:
        """What this node holds, as the hello lists it."""
        rows = self.db.fetchall("SELECT kind, ns, name, rv FROM resources ORDER BY kind, ns, name")
        return [{"kind": k, "ns": n, "name": m, "rv": rv} for k, n, m, rv in rows]

    # -- keyed JSON records (progress, datasets, workers, labelled) --------------------------
    def get_record(self, table: str, ns: str, name: str) -> dict[str, Any] | None:
        assert table in _TABLES_BY_KEY
        row = self.db.fetchone(f"SELECT data FROM {table} WHERE ns=? AND name=?", (ns, name))
        return None if row is None else dict(json.loads(row[0]))

    def put_record(self, table: str, ns: str, name: str, data: dict[str, Any]) -> None:
        assert table in _TABLES_BY_KEY
        self.db.execute(f"INSERT OR REPLACE INTO {table} VALUES (?,?,?)", (ns, name, json.dumps(data)))

    def delete_record(self, table: str, ns: str, name: str) -> None:
        assert table in _TABLES_BY_KEY
        self.db.execute(f"DELETE FROM {table} WHERE ns=? AND name=?", (ns, name))

    def records(self, table: str) -> list[tuple[str, str, dict[str, Any]]]:
        assert table in _TABLES_BY_KEY
        rows = self.db.fetchall(f"SELECT ns, name, data FROM {table} ORDER BY ns, name")
        return [(n, m, json.loads(d)) for n, m, d in rows]

    # -- worker reports kept until their job is known ------------------------------------------
    def add_pending_info(
        self, ns: str, worker: str, job: str, body: dict[str, Any], ts: float | None = None
    ) -> int:
        cur = self.db.execute(
            "INSERT INTO pending_info (ns, worker, job, body, ts) VALUES (?,?,?,?,?)",
            (ns, worker, job, json.dumps(body), time.time() if ts is None else ts),
        )
        return int(cur.lastrowid or 0)

    def pending_info(self) -> list[tuple[int, str, str, str, dict[str, Any]]]:
        rows = self.db.fetchall("SELECT id, ns, worker, job, body FROM pending_info ORDER BY id")
        return [(i, n, w, j, json.loads(b)) for i, n, w, j, b in rows]

    def drop_pending_info(self, ident: int) -> None:
        self.db.execute("DELETE FROM pending_info WHERE id=?", (ident,))

    def pending_info_size(self) -> tuple[int, int]:
        """How many worker posts wait, and their bytes (as stored)."""
        row = self.db.fetchone("SELECT count(*), coalesce(sum(length(body)), 0) FROM pending_info")
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def drop_pending_info_before(self, cutoff: float) -> int:
        """Forget the posts kept before ``cutoff`` (wall clock); returns how many."""
        return self.db.execute("DELETE FROM pending_info WHERE ts < ?", (cutoff,)).rowcount

    # -- labelled samples appended to Datasets ---------------------------------------------------
    def appended_ids(self, ns: str, dataset: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` were appended to Dataset ``ns/dataset`` before."""
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.fetchall(
                f"SELECT id FROM labelled_ids WHERE ns=? AND dataset=? AND id IN ({marks})",
                (ns, dataset, *chunk),
            )
            found.update(str(r[0]) for r in rows)
        return found

    def add_appended_ids(self, ns: str, dataset: str, ids: list[str]) -> None:
        """Record ``ids`` as appended to Dataset ``ns/dataset`` (joins the caller's transaction)."""
        with self.db.transaction():
            for ident in ids:
                self.db.execute("INSERT OR IGNORE INTO labelled_ids VALUES (?,?,?)", (ns, dataset, ident))


@dataclass(frozen=True, slots=True)
class Entry:
    """One queued report."""

    seq: int
    kind: str
    ns: str
    name: str
    body: dict[str, Any]
    ts: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    low_seq: int | None
    next_seq: int
    oldest_ts: float | None


_DEPTH = "(SELECT n FROM counters WHERE key='outbox')"
_LOW = "(SELECT min(seq) FROM outbox)"
_LAST = "(SELECT seq FROM sqlite_sequence WHERE name='outbox')"


class _AtBound(Exception):
    """Internal: roll back an insert that does not fit."""


class OutboxTable:
    """The repository of the outbox: its rows and the ``counters`` row that counts them.

    The policy (what is dropped or refused when full, what is in flight) is ``outbox.py``'s.
    The depth is never counted per change: two triggers keep the ``outbox`` counter in the
    transaction of every insert and delete, and it is counted anew at every open.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        with db.transaction():
            db.execute_all(_OUTBOX_SCHEMA)
            # Counted once per open (a database of an older version has no counter yet); from
            # then on the triggers keep it exact, in the transaction of each change.
            db.execute("INSERT OR REPLACE INTO counters VALUES ('outbox', (SELECT count(*) FROM outbox))")

    def insert(
        self, kind: str, ns: str, name: str, body: str, *, coalesce_key: str | None, max_depth: int
    ) -> tuple[int, list[int]] | None:
        """Queue one report, replacing the rows of ``coalesce_key``; its seq and the seqs it
        replaced. None when the outbox would hold more than ``max_depth`` rows: then nothing
        changed (the rows it would have replaced are still queued)."""
        try:
            with self.db.transaction():
                replaced: list[int] = []
                if coalesce_key is not None:
                    replaced = [
                        int(r[0])
                        for r in self.db.fetchall("SELECT seq FROM outbox WHERE ckey=?", (coalesce_key,))
                    ]
                    if replaced:
                        self.db.execute("DELETE FROM outbox WHERE ckey=?", (coalesce_key,))
                if self.depth() >= max_depth:
                    raise _AtBound
                cur = self.db.execute(
                    "INSERT INTO outbox (kind, ns, name, body, ckey, ts) VALUES (?,?,?,?,?,?)",
                    (kind, ns, name, body, coalesce_key, time.time()),
                )
                return int(cur.lastrowid or 0), replaced
        except _AtBound:
            return None

    def after(self, seq: int, limit: int) -> list[Entry]:
        """The first ``limit`` reports after ``seq``, oldest first."""
        rows = self.db.fetchall(
            "SELECT seq, kind, ns, name, body, ts FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [Entry(int(s), k, n, m, json.loads(b), float(t)) for s, k, n, m, b, t in rows]

    def delete(self, seqs: list[int]) -> int:
        """Delete these reports (one transaction); how many there were."""
        deleted = 0
        with self.db.transaction():
            for i in range(0, len(seqs), 500):
                chunk = seqs[i : i + 500]
                marks = ",".join("?" * len(chunk))
                deleted += self.db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk).rowcount
        return deleted

    def depth(self) -> int:
        """The number of queued reports (the counter, not a count of the table)."""
        row = self.db.fetchone(f"SELECT {_DEPTH}")
        return int(row[0] or 0) if row else 0

    def bounds(self) -> tuple[int, int | None, int]:
        """Depth, lowest seq and next seq, in one statement: no scan of the table."""
        row = self.db.fetchone(f"SELECT {_DEPTH}, {_LOW}, {_LAST}")
        assert row is not None
        depth, low, last = row
        return int(depth or 0), None if low is None else int(low), int(last or 0) + 1

    def stats(self) -> OutboxStats:
        """The bounds and the time of the oldest report, in one statement (one snapshot)."""
        row = self.db.fetchone(f"SELECT {_DEPTH}, {_LOW}, {_LAST}, (SELECT min(ts) FROM outbox)")
        assert row is not None
        depth, low, last, oldest = row
        return OutboxStats(int(depth or 0), None if low is None else int(low), int(last or 0) + 1, oldest)
