"""The LC's local state: one SQLite database (WAL) under the state directory.

Used by every edge component through one :class:`Store` (one connection, one lock): the bus
session stores desired resources and tombstones, the manager its per-job progress, the worker
runtime its processes, the worker API the reports it keeps for unknown jobs, and the outbox
(``outbox.py``) its queued reports. Sharing one connection lets a caller commit a progress
change and the report that announces it in one transaction (``with store.tx():``), so a
SIGKILL can never leave one without the other.

Tables::

    meta(key, value)                      epoch (random id made with the DB), created
    resources(kind, ns, name, rv, obj)    what the GM wants this node to hold
    tombstones(kind, ns, name, rv)        the rv of deletions, so a late upsert is stale
    progress(ns, name, data)              per-job round, sample cursor, pools, acted conditions
    datasets(ns, name, data)              last counted / reported numberOfSamples, status
    workers(ns, name, data)               local worker processes (pid, start time, phase, ...)
    pending_info(id, ns, worker, job, body, ts)   worker-API posts not yet in the outbox
    outbox(seq, kind, ns, name, body, ckey, ts)   see outbox.py
    counters(key, n)                      'outbox': the number of rows of outbox, kept by two
                                          triggers in the transaction of every insert and
                                          delete, and counted again at every open
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL, rv TEXT NOT NULL, obj TEXT NOT NULL,
    PRIMARY KEY (kind, ns, name));
CREATE TABLE IF NOT EXISTS tombstones (
    kind TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL, rv TEXT NOT NULL,
    PRIMARY KEY (kind, ns, name));
CREATE TABLE IF NOT EXISTS progress (ns TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (ns, name));
CREATE TABLE IF NOT EXISTS datasets (ns TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (ns, name));
CREATE TABLE IF NOT EXISTS workers (ns TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (ns, name));
CREATE TABLE IF NOT EXISTS pending_info (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ns TEXT NOT NULL, worker TEXT NOT NULL, job TEXT NOT NULL,
    body TEXT NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
    body BLOB NOT NULL, ckey TEXT, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_ckey ON outbox (ckey) WHERE ckey IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""

TRIGGERS = (  # statements with ";" inside, so not in SCHEMA (which is split on ";")
    """CREATE TRIGGER IF NOT EXISTS outbox_depth_ins AFTER INSERT ON outbox
    BEGIN UPDATE counters SET n = n + 1 WHERE key = 'outbox'; END""",
    """CREATE TRIGGER IF NOT EXISTS outbox_depth_del AFTER DELETE ON outbox
    BEGIN UPDATE counters SET n = n - 1 WHERE key = 'outbox'; END""",
)

_TABLES_BY_KEY = ("progress", "datasets", "workers")

CORRUPT_SUFFIX = ".corrupt-"
"""A corrupt database ``lc.db`` is renamed ``lc.db.corrupt-<UTC time>`` (with its -wal/-shm)."""

log = logging.getLogger("lifelong.edge.db")


def _corrupt(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def _move_aside(path: Path) -> Path:
    """Rename a corrupt database and its WAL/SHM files next to it; return the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}{CORRUPT_SUFFIX}{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{CORRUPT_SUFFIX}{stamp}.{n}")
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    path.rename(target)
    return target


def moved_aside(path: Path) -> list[Path]:
    """The corrupt databases moved aside next to ``path`` (until an operator removes them)."""
    return sorted(
        p for p in path.parent.glob(f"{path.name}{CORRUPT_SUFFIX}*") if not p.name.endswith(("-wal", "-shm"))
    )


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
    """The one SQLite connection of an LC process, guarded by a re-entrant lock.

    Every method is thread-safe. ``tx()`` groups calls into one transaction; calls outside a
    ``tx()`` commit on their own.
    """

    def __init__(self, path: Path, *, sync: str = "full") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0
        self._changed: dict[str, set[tuple[str, str]]] = {}  # kind -> (ns, name) put or deleted
        self.moved_aside: Path | None = None  # where a corrupt database was moved by this open
        try:
            self._open(sync)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _corrupt(exc):
                raise  # locked, unwritable, disk full ...: not corruption, nothing is moved
            # Renamed while still open, so that closing cannot remove or checkpoint the WAL
            # (it may hold the last committed changes) under its old name.
            self.moved_aside = _move_aside(path)
            with suppress(Exception):
                self._conn.close()
            log.error(
                "local database %s is corrupt (%s): moved aside to %s (kept, never deleted); "
                "starting a new one with a new outbox epoch, the GM resends the desired state",
                path,
                exc,
                self.moved_aside,
            )
            self._open(sync)

    def _open(self, sync: str) -> None:
        self._conn = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        self._conn.execute("PRAGMA busy_timeout=30000")
        check = self._conn.execute("PRAGMA quick_check").fetchall()
        if [tuple(r) for r in check] != [("ok",)]:
            raise sqlite3.DatabaseError(f"quick_check: {'; '.join(str(r[0]) for r in check[:5])}")
        with self.tx():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            for statement in TRIGGERS:
                self._conn.execute(statement)
            # Counted once per open (a database of an older version has no counter yet); from
            # then on the triggers keep it exact, in the transaction of each change.
            self._conn.execute(
                "INSERT OR REPLACE INTO counters VALUES ('outbox', (SELECT count(*) FROM outbox))"
            )
            row = self._conn.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta VALUES ('epoch', ?)", (secrets.token_hex(8),))
                self._conn.execute("INSERT INTO meta VALUES ('created', ?)", (str(time.time()),))
        self.epoch: str = self._conn.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0]

    # -- transactions ----------------------------------------------------------------------
    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A transaction (nested calls join the outer one). Commits on success, rolls back on error."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self._conn
            except BaseException:
                self._depth -= 1
                if outer and self._conn.in_transaction:  # SQLITE_FULL may have rolled back already
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.Error:
                    # A failed COMMIT (disk full, I/O error) leaves the transaction open: roll it
                    # back, or every later BEGIN would fail and the LC could never write again.
                    if self._conn.in_transaction:
                        with suppress(sqlite3.Error):
                            self._conn.execute("ROLLBACK")
                    raise

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def close(self) -> None:
        with self._lock:
            with suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()

    # -- resources ---------------------------------------------------------------------------
    def get_resource(self, kind: str, ns: str, name: str) -> tuple[str, dict[str, Any]] | None:
        rows = self.query("SELECT rv, obj FROM resources WHERE kind=? AND ns=? AND name=?", (kind, ns, name))
        return (rows[0][0], json.loads(rows[0][1])) if rows else None

    def held_rv(self, kind: str, ns: str, name: str) -> str | None:
        rows = self.query("SELECT rv FROM resources WHERE kind=? AND ns=? AND name=?", (kind, ns, name))
        return str(rows[0][0]) if rows else None

    def tombstone_rv(self, kind: str, ns: str, name: str) -> str | None:
        rows = self.query("SELECT rv FROM tombstones WHERE kind=? AND ns=? AND name=?", (kind, ns, name))
        return str(rows[0][0]) if rows else None

    def take_changed(self, kind: str) -> set[tuple[str, str]]:
        """The (ns, name) of every resource of ``kind`` put or deleted since the last call (by
        this process; a change rolled back is listed too). One consumer per kind: the manager
        takes the jobs', so that a step reads only the jobs that changed."""
        with self._lock:
            return self._changed.pop(kind, set())

    def put_resource(self, kind: str, ns: str, name: str, rv: str, obj: dict[str, Any]) -> None:
        with self.tx() as c:
            self._changed.setdefault(kind, set()).add((ns, name))
            c.execute(
                "INSERT OR REPLACE INTO resources VALUES (?,?,?,?,?)", (kind, ns, name, rv, json.dumps(obj))
            )
            c.execute("DELETE FROM tombstones WHERE kind=? AND ns=? AND name=?", (kind, ns, name))

    def delete_resource(self, kind: str, ns: str, name: str, rv: str | None) -> None:
        with self.tx() as c:
            self._changed.setdefault(kind, set()).add((ns, name))
            c.execute("DELETE FROM resources WHERE kind=? AND ns=? AND name=?", (kind, ns, name))
            if rv is not None:
                c.execute("INSERT OR REPLACE INTO tombstones VALUES (?,?,?,?)", (kind, ns, name, rv))

    def resources(self, kind: str | None = None) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        if kind is None:
            rows = self.query("SELECT kind, ns, name, rv, obj FROM resources ORDER BY kind, ns, name")
        else:
            rows = self.query(
                "SELECT kind, ns, name, rv, obj FROM resources WHERE kind=? ORDER BY ns, name", (kind,)
            )
        return [(k, n, m, rv, json.loads(o)) for k, n, m, rv, o in rows]

    def held(self) -> list[dict[str, str]]:
        """What this node holds, as the hello lists it."""
        rows = self.query("SELECT kind, ns, name, rv FROM resources ORDER BY kind, ns, name")
        return [{"kind": k, "ns": n, "name": m, "rv": rv} for k, n, m, rv in rows]

    # -- keyed JSON records (progress, datasets, workers) ------------------------------------
    def get_record(self, table: str, ns: str, name: str) -> dict[str, Any] | None:
        assert table in _TABLES_BY_KEY
        rows = self.query(f"SELECT data FROM {table} WHERE ns=? AND name=?", (ns, name))
        return json.loads(rows[0][0]) if rows else None

    def put_record(self, table: str, ns: str, name: str, data: dict[str, Any]) -> None:
        assert table in _TABLES_BY_KEY
        with self.tx() as c:
            c.execute(f"INSERT OR REPLACE INTO {table} VALUES (?,?,?)", (ns, name, json.dumps(data)))

    def delete_record(self, table: str, ns: str, name: str) -> None:
        assert table in _TABLES_BY_KEY
        with self.tx() as c:
            c.execute(f"DELETE FROM {table} WHERE ns=? AND name=?", (ns, name))

    def records(self, table: str) -> list[tuple[str, str, dict[str, Any]]]:
        assert table in _TABLES_BY_KEY
        rows = self.query(f"SELECT ns, name, data FROM {table} ORDER BY ns, name")
        return [(n, m, json.loads(d)) for n, m, d in rows]

    # -- worker reports kept until their job is known ------------------------------------------
    def add_pending_info(self, ns: str, worker: str, job: str, body: dict[str, Any]) -> int:
        with self.tx() as c:
            cur = c.execute(
                "INSERT INTO pending_info (ns, worker, job, body, ts) VALUES (?,?,?,?,?)",
                (ns, worker, job, json.dumps(body), time.time()),
            )
            return int(cur.lastrowid or 0)

    def pending_info(self) -> list[tuple[int, str, str, str, dict[str, Any]]]:
        rows = self.query("SELECT id, ns, worker, job, body FROM pending_info ORDER BY id")
        return [(i, n, w, j, json.loads(b)) for i, n, w, j, b in rows]

    def drop_pending_info(self, ident: int) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM pending_info WHERE id=?", (ident,))
