"""The standalone resource store: one SQLite file, the GM's own little API server database.

Who uses it: ``lifelong gm --store sqlite:PATH`` (through ``cloud/service.py``), the controllers
and the local HTTP API. It implements ``lifelong.cloud.stores.base.ResourceStore``.

How it works:

* ``resourceVersion`` is one global integer counter (table ``meta``) that grows with every change
  of any object: apply with a changed spec, a changed status, a delete. Versions are decimal
  strings on the wire, as docs/protocol.md says.
* An object is kept as two JSON columns, ``body`` (everything but ``status``) and ``status``:
  ``apply`` writes only the first, ``update_status`` only the second.
* Every change is appended to the ``changes`` table in the same transaction; ``watch`` lists
  the objects, then follows that log from the version the list was taken at, woken by an
  in-process condition variable. A watcher that falls behind the pruned log re-lists. Each
  object is parsed into its model once, as its event is made (``WatchEvent.of``); one the models
  refuse (written by an older, buggier GM, say) becomes an event with the reason instead.

Thread-safe: one :class:`~lifelong.common.sqlite.Database` (one connection behind a lock);
every change is one transaction, which joins a caller's if there is one.
"""

from __future__ import annotations

import builtins
import copy
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lifelong.cloud.stores.base import Conflict, ModelCache, NotFound, Object, WatchEvent
from lifelong.common.sqlite import Database

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"
CHANGE_LOG_KEEP = 20_000
"""Changes kept for watchers that fall behind; older ones are pruned (a watcher then re-lists)."""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
    rv INTEGER NOT NULL, body TEXT NOT NULL, status TEXT NOT NULL,
    PRIMARY KEY (kind, ns, name)
)""",
    "CREATE TABLE IF NOT EXISTS changes (rv INTEGER PRIMARY KEY, type TEXT NOT NULL, object TEXT NOT NULL)",
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('rv', 0)",
)

# metadata fields the store owns; a caller's values are ignored
_SERVER_META = ("resourceVersion", "uid", "creationTimestamp", "generation")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _key(obj: Object) -> tuple[str, str, str]:
    kind = obj.get("kind")
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(kind, str) or not kind:
        raise ValueError("object has no kind")
    if not isinstance(name, str) or not name:
        raise ValueError("object has no metadata.name")
    ns = meta.get("namespace") or DEFAULT_NAMESPACE
    return kind, str(ns), name


def _desired_part(obj: Object) -> Object:
    """What ``apply`` compares: everything but status and the server-owned metadata."""
    out = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
    meta = dict(out.get("metadata") or {})
    for field in _SERVER_META:
        meta.pop(field, None)
    out["metadata"] = meta
    return out


class SqliteStore:
    """``ResourceStore`` over one SQLite file (``:memory:`` works for tests), or over an open
    :class:`~lifelong.common.sqlite.Database` (tests that prune its change log)."""

    def __init__(self, path: str | Path | Database) -> None:
        self.db = Database.of(path, synchronous="full", readers=True)
        self.path = str(self.db.path)
        self.db.execute_all(_SCHEMA)
        # Woken after every committed change: watchers wait on it. Its lock is never held
        # while waiting for the database's (a watcher reads with it released).
        self._changed = threading.Condition()
        self._commits = 0
        self._closed = False
        self._issued = 0  # the highest version _next_rv handed out (under the database's lock)

    # -- helpers ---------------------------------------------------------------------------
    def _committed(self) -> None:
        with self._changed:
            self._commits += 1
            self._changed.notify_all()

    def _current_rv(self) -> int:
        row = self.db.fetchone("SELECT value FROM meta WHERE key='rv'")
        return int(row[0]) if row else 0

    def _next_rv(self) -> int:
        # Above every version handed out by this process, even one whose transaction (or
        # savepoint: a report of a burst, cloud/intake.py) was rolled back: a version names one
        # content only, which caches keyed by version (``ModelCache``) rely on.
        with self.db.locked():
            rv = max(self._current_rv(), self._issued) + 1
            self._issued = rv
            self.db.execute("UPDATE meta SET value=? WHERE key='rv'", (rv,))
        return rv

    @staticmethod
    def _compose(body: str, status: str, rv: int) -> Object:
        obj: Object = json.loads(body)
        st = json.loads(status)
        obj.setdefault("metadata", {})["resourceVersion"] = str(rv)
        if st:
            obj["status"] = st
        return obj

    def _log(self, rv: int, type_: str, obj: Object) -> None:
        self.db.execute("INSERT INTO changes (rv, type, object) VALUES (?, ?, ?)", (rv, type_, _dumps(obj)))
        if rv % 1000 == 0:
            self.db.execute("DELETE FROM changes WHERE rv <= ?", (rv - CHANGE_LOG_KEEP,))
        self.db.after_commit(self._committed)

    def _row(self, kind: str, ns: str, name: str) -> tuple[int, str, str] | None:
        row = self.db.fetchone(
            "SELECT rv, body, status FROM objects WHERE kind=? AND ns=? AND name=?", (kind, ns, name)
        )
        return None if row is None else (int(row[0]), str(row[1]), str(row[2]))

    # -- ResourceStore ---------------------------------------------------------------------
    @property
    def resource_version(self) -> str:
        """The newest version of the whole store (the counter)."""
        return str(self._current_rv())

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        row = self._row(kind, namespace, name)
        return None if row is None else self._compose(row[1], row[2], row[0])

    def get_changed(
        self, kind: str, namespace: str, name: str, known: str | None
    ) -> tuple[str, Object | None] | None:
        # one read; the JSON columns only when the version is not ``known``
        row = self.db.fetchone(
            "SELECT rv, CASE WHEN rv = ? THEN NULL ELSE body END, CASE WHEN rv = ? THEN NULL ELSE status END"
            " FROM objects WHERE kind=? AND ns=? AND name=?",
            (known, known, kind, namespace, name),
        )
        if row is None:
            return None
        rv, body, status = row
        if body is None or status is None:
            return str(rv), None
        return str(rv), self._compose(str(body), str(status), int(rv))

    def list(self, kind: str, namespace: str | None = None) -> Sequence[Object]:
        if namespace is None:
            rows = self.db.fetchall(
                "SELECT rv, body, status FROM objects WHERE kind=? ORDER BY ns, name", (kind,)
            )
        else:
            rows = self.db.fetchall(
                "SELECT rv, body, status FROM objects WHERE kind=? AND ns=? ORDER BY name", (kind, namespace)
            )
        return [self._compose(body, status, rv) for rv, body, status in rows]

    def apply(self, obj: Object) -> Object:
        kind, ns, name = _key(obj)
        desired = _desired_part(obj)
        desired["metadata"]["namespace"] = ns
        with self.db.transaction():
            row = self._row(kind, ns, name)
            if row is None:
                meta = desired["metadata"]
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = _now()
                meta["generation"] = 1
                status = "{}"
                type_ = "ADDED"
            else:
                old_rv, old_body, status = row
                old = json.loads(old_body)
                if _desired_part(old) == desired:
                    return self._compose(old_body, status, old_rv)
                meta = desired["metadata"]
                old_meta = old.get("metadata", {})
                meta["uid"] = old_meta.get("uid")
                meta["creationTimestamp"] = old_meta.get("creationTimestamp")
                changed_spec = old.get("spec") != desired.get("spec")
                meta["generation"] = int(old_meta.get("generation", 1)) + (1 if changed_spec else 0)
                type_ = "MODIFIED"
            rv = self._next_rv()
            body = _dumps(desired)
            self.db.execute(
                "INSERT OR REPLACE INTO objects (kind, ns, name, rv, body, status) VALUES (?,?,?,?,?,?)",
                (kind, ns, name, rv, body, status),
            )
            result = self._compose(body, status, rv)
            self._log(rv, type_, result)
        return result

    def update_status(
        self, kind: str, namespace: str, name: str, status: Object, *, resource_version: str | None = None
    ) -> Object:
        with self.db.transaction():
            row = self._row(kind, namespace, name)
            if row is None:
                raise NotFound(f"{kind} {namespace}/{name} not found")
            old_rv, body, old_status = row
            if resource_version is not None and str(old_rv) != str(resource_version):
                raise Conflict(f"{kind} {namespace}/{name} is at version {old_rv}, not {resource_version}")
            new_status = _dumps(status)
            if new_status == old_status:
                return self._compose(body, old_status, old_rv)
            rv = self._next_rv()
            self.db.execute(
                "UPDATE objects SET rv=?, status=? WHERE kind=? AND ns=? AND name=?",
                (rv, new_status, kind, namespace, name),
            )
            result = self._compose(body, new_status, rv)
            self._log(rv, "MODIFIED", result)
        return result

    def delete(self, kind: str, namespace: str, name: str) -> Object | None:
        """Delete; the returned object (and the DELETED event) carry the deletion's version."""
        with self.db.transaction():
            row = self._row(kind, namespace, name)
            if row is None:
                return None
            _, body, status = row
            rv = self._next_rv()
            self.db.execute("DELETE FROM objects WHERE kind=? AND ns=? AND name=?", (kind, namespace, name))
            result = self._compose(body, status, rv)
            self._log(rv, "DELETED", result)
        return result

    def _snapshot(self) -> tuple[int, builtins.list[Object]]:
        with self.db.transaction():  # one snapshot: the objects as of version ``rv``
            rv = self._current_rv()
            rows = self.db.fetchall("SELECT rv, body, status FROM objects ORDER BY rv")
        return rv, [self._compose(body, status, r) for r, body, status in rows]

    def watch(
        self,
        handler: Callable[[WatchEvent], None],
        *,
        stop: threading.Event,
        models: ModelCache | None = None,
    ) -> None:
        """List (ADDED for each object), then every change in version order, until ``stop``."""
        seen: set[tuple[str, str, str]] = set()

        def relist() -> int:
            rv, objects = self._snapshot()
            present = set()
            for obj in objects:
                event = WatchEvent.of("ADDED", obj, models)
                present.add(event.key)
                handler(event)
            for key in sorted(seen - present):
                handler(WatchEvent.gone(key, str(rv)))
            seen.clear()
            seen.update(present)
            return rv

        last = relist()
        while not stop.is_set():
            with self._changed:
                if self._closed:
                    return
                commits = self._commits
            try:
                rows, gap = self._changes_after(last)
            except sqlite3.ProgrammingError:
                if self._closed:
                    return  # closed while reading
                raise
            if not rows and not gap:
                with self._changed:  # nothing new: wait for the next commit (none lost since the read)
                    if self._commits == commits and not self._closed:
                        self._changed.wait(timeout=0.5)
                continue
            if gap:
                log.warning("store watch fell behind the change log; re-listing")
                last = relist()
                continue
            for rv, type_, text in rows:
                event = WatchEvent.of(type_, json.loads(text), models)
                if type_ == "DELETED":
                    seen.discard(event.key)
                else:
                    seen.add(event.key)
                handler(event)
                last = int(rv)
                if stop.is_set():
                    return

    def _changes_after(self, last: int) -> tuple[builtins.list[tuple[Any, ...]], bool]:
        """The next changes after version ``last``, and whether the log was pruned past it."""
        with self.db.transaction():  # one snapshot of the log and the counter
            rows = self.db.fetchall(
                "SELECT rv, type, object FROM changes WHERE rv > ? ORDER BY rv LIMIT 500", (last,)
            )
            if not rows:
                return rows, self._current_rv() > last
            if int(rows[0][0]) == last + 1:
                return rows, False
            row = self.db.fetchone("SELECT MIN(rv) FROM changes")
            oldest = int(row[0]) if row and row[0] is not None else 0
            return rows, oldest > last + 1

    def close(self) -> None:
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        self.db.close()
