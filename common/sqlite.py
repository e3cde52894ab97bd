"""One SQLite database file, as every store of the project opens and writes it.

Used by the repositories, and only by them: the GM's bookkeeping (``cloud/gmstate.py``), the
GM's standalone resource store (``cloud/stores/sqlite.py``) and the LC's local store and
outbox (``edge/db.py``). They hold the SQL of their tables; this module holds what is the same
for all of them, once (docs/architecture.md, "Storage"):

* the file: WAL journal, ``synchronous`` FULL or NORMAL as its owner chooses, a busy timeout;
* FULL by group commit: a transaction commits under the lock without waiting for the disk, then
  waits, with the lock released, for one ``fdatasync`` of the WAL that covers its commit; a
  sync already under way is waited for, and the next one covers every commit made meanwhile
  (docs/architecture.md, "Storage");
* one connection for writes guarded by one re-entrant lock, so a :class:`Database` may be
  shared by threads; a statement outside a transaction commits on its own;
* with ``readers=True`` (the GM's databases), reads (``fetchall``/``fetchone``) outside a
  transaction on connections of their own (a small pool, file databases only): WAL lets them
  read the last commit while a writer holds its transaction or waits for its fsync, so they
  do not wait for it; a thread that holds the lock (inside a transaction, or ``locked()``)
  reads on the writer's connection and sees its own changes;
* :meth:`Database.transaction`, which nests: the outermost is ``BEGIN IMMEDIATE`` ... ``COMMIT``,
  an inner one a SAVEPOINT, so a repository method that groups its own statements can also be
  called inside a caller's bigger transaction;
* optionally (the LC's local database), a corrupt file is moved aside, never deleted, and a
  new one started (:attr:`Database.moved_aside`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any, Literal, TypeVar

log = logging.getLogger("lifelong.common.sqlite")

MEMORY = ":memory:"
"""The path of a database that lives in memory only (tests)."""

CORRUPT_SUFFIX = ".corrupt-"
"""A corrupt database ``x.db`` is renamed ``x.db.corrupt-<UTC time>`` (with its -wal/-shm)."""

Params = Sequence[Any] | Mapping[str, Any]
R = TypeVar("R")


class TransactionLost(sqlite3.OperationalError):
    """SQLite rolled the whole transaction back by itself (disk full, I/O error) while a block
    inside it went on: nothing of the transaction is kept, and the outermost block fails."""


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


class Database:
    """One SQLite file (or ``:memory:``) behind one connection and one re-entrant lock.

    Thread-safe: every write runs under the lock, and a transaction holds it from its
    ``BEGIN`` to its ``COMMIT``, so another thread's writes wait for it and no thread sees it
    half done. With ``readers``, ``fetchall``/``fetchone`` on a thread that does not hold the
    lock read on a reader connection (file databases): the last committed state, without waiting for a writer
    (each read is one statement, a snapshot of its own); on the thread holding the lock, or in
    memory, or without ``readers``, they read on the writer's connection.

    Transactions nest (:meth:`transaction`), which is what lets a batch of changes commit at
    once: ``with db.transaction(): for m in batch: repo.apply(m)`` is one ``COMMIT``, whatever
    transactions ``repo.apply`` opens itself; with an inner ``with db.transaction():`` around
    each message, one bad message rolls back alone and the others still commit.

    Durability with ``synchronous="full"`` (a file): the connection runs SQLite's NORMAL (a
    COMMIT writes the WAL, no fsync) and the database syncs the WAL itself, in groups. Whoever
    may act on a commit waits until a sync covers it, without holding the lock: the outermost
    :meth:`transaction` before it returns (not ``lazy`` ones), a statement committed on its own
    before :meth:`execute` returns, and a read outside a transaction (:meth:`fetchall`,
    :meth:`fetchone`) before it returns what it read (every commit it could have seen, lazy ones
    aside: those may be lost by design). So nothing a caller can send, answer or acknowledge
    rests on a commit a power cut could still take back, as with SQLite's FULL, while
    the threads that commit during one sync share the next (one ``fdatasync`` for many commits:
    what SQLite's FULL cannot do, since it syncs inside COMMIT, under the lock). A sync that
    fails raises ``OSError`` to the callers waiting for it (their commit is made but not known
    durable); the next caller tries again.

    ``recover_corrupt``: check the file at open (``PRAGMA quick_check``); a corrupt one is
    renamed ``<name>.corrupt-<UTC time>`` with its -wal/-shm (kept for an operator, never
    deleted), logged, and a new empty database started in its place (:attr:`moved_aside`).
    Errors that are not corruption (locked, unwritable, disk full) are raised as they are.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["full", "normal"] = "full",
        busy_timeout: float = 30.0,
        recover_corrupt: bool = False,
        readers: bool = False,
    ) -> None:
        self.path = Path(path)
        """The file (``Path(":memory:")`` for a database in memory)."""
        self.memory = str(path) == MEMORY
        self.readers = readers and not self.memory
        """Reads outside a transaction go to reader connections (see the class docstring)."""
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.moved_aside: Path | None = None
        """Where a corrupt database was moved by this open (``recover_corrupt``), else None."""
        self._lock = threading.RLock()
        self._depth = 0  # open transaction blocks: 0 none, 1 the outermost, 2+ savepoints
        self._after: list[list[Callable[[], None]]] = []  # per open block: run after COMMIT
        self._readers: list[sqlite3.Connection] = []  # idle reader connections (file databases)
        self._readers_lock = threading.Lock()
        self._trace: Callable[[str], object] | None = None
        self._closed = False
        # Group commit (synchronous FULL on a file): commits counted under the lock, the count a
        # finished sync covers, and the one sync at a time under way (see the class docstring).
        self.group_sync = self.synchronous == "full" and not self.memory
        self._commits = 0
        self._needed = 0  # the last commit that is not lazy: what a read must see durable
        self._durable = 0
        self._syncing = False
        self._synced = threading.Condition()
        self._wal_fd: int | None = None
        self._wal_ino: int | None = None
        self.syncs = 0
        """WAL syncs done (each covers one or more commits)."""
        self._changes = 0  # the connection's total_changes when the outermost block began
        if not self.memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._open(check=recover_corrupt)
        except sqlite3.DatabaseError as exc:
            not_corrupt = isinstance(exc, sqlite3.OperationalError) and not _corrupt(exc)
            if not recover_corrupt or self.memory or not_corrupt:
                # locked, unwritable, disk full ...: not corruption, nothing is moved
                self._close_quietly()
                raise
            # Renamed while still open, so that closing cannot remove or checkpoint the WAL
            # (it may hold the last committed changes) under its old name.
            self.moved_aside = _move_aside(self.path)
            self._close_quietly()
            log.error(
                "local database %s is corrupt (%s): moved aside to %s (kept, never deleted); "
                "starting a new one",
                self.path,
                exc,
                self.moved_aside,
            )
            self._conn = self._open(check=False)

    @classmethod
    def of(
        cls,
        source: str | Path | Database,
        *,
        synchronous: Literal["full", "normal"] = "full",
        recover_corrupt: bool = False,
        readers: bool = False,
    ) -> Database:
        """``source`` itself if it is an open database (a test's seam), else the file opened."""
        if isinstance(source, Database):
            return source
        return cls(source, synchronous=synchronous, recover_corrupt=recover_corrupt, readers=readers)

    def _open(self, *, check: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=self.busy_timeout
        )
        self._conn = conn  # closed by the caller if what follows finds the file corrupt
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL on a file is the group commit below, over a connection in NORMAL
        full = self.synchronous == "full" and not self.group_sync
        conn.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        if check:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if [tuple(r) for r in rows] != [("ok",)]:
                raise sqlite3.DatabaseError(f"quick_check: {'; '.join(str(r[0]) for r in rows[:5])}")
        return conn

    def _close_quietly(self) -> None:
        with suppress(Exception):
            self._conn.close()

    def sync(self) -> bool:
        """Make every commit so far durable, lazy ones included: with group commit a sync of
        the WAL (or the one under way), else a passive checkpoint, which syncs the WAL to disk
        first. Only between transactions: called inside one (of this thread; another thread's
        is waited for), it does nothing and returns False."""
        with self._lock:
            if self._depth:
                return False
            if not self.group_sync:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                return True
            target = self._commits  # lazy commits included
        self._wait_durable(target)
        return True

    # -- group commit ----------------------------------------------------------------------
    def _count_commit(self, *, lazy: bool = False) -> None:
        """After a COMMIT (the lock held): count it if it changed anything; unless ``lazy``, a
        read from now on waits for a sync that covers it."""
        if self._conn.total_changes != self._changes:
            self._commits += 1
            self._changes = self._conn.total_changes
            if not lazy:
                self._needed = self._commits

    def _wait_durable(self, target: int) -> None:
        """Return once a sync of the WAL covers the first ``target`` commits: wait for the sync
        under way, or be the one to sync (covering every commit made so far). The lock must
        not be needed for it: it is not taken here."""
        if not self.group_sync:
            return
        with self._synced:
            while True:
                if self._durable >= target:
                    return
                if not self._syncing:
                    break
                self._synced.wait()
            self._syncing = True
            covers = self._commits  # every commit counted has written its WAL frames
        done = False
        try:
            self._sync_wal()
            done = True
        finally:
            with self._synced:
                self._syncing = False
                if done:
                    self._durable = max(self._durable, covers)
                    self.syncs += 1
                self._synced.notify_all()

    def _sync_wal(self) -> None:
        """``fdatasync`` the WAL file (ours, opened read-only; Linux syncs the file whatever
        descriptor names it). Opened again if SQLite made a new one; its directory synced
        once per new file, so that the file's name survives a power cut too."""
        wal = self.path.with_name(self.path.name + "-wal")
        ino = os.stat(wal).st_ino
        if self._wal_fd is None or ino != self._wal_ino:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            self._wal_fd = os.open(wal, os.O_RDONLY)
            self._wal_ino = ino
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        os.fdatasync(self._wal_fd)

    def close(self) -> None:
        """Checkpoint the WAL into the file (so the file alone holds everything) and close."""
        with self._readers_lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for conn in readers:
            with suppress(sqlite3.Error):
                conn.close()
        with self._lock:
            with suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
        with self._synced:
            while self._syncing:  # a sync under way finishes on its descriptor first
                self._synced.wait()
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None

    # -- transactions ----------------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        """Is a :meth:`transaction` block open (on any thread)?"""
        return self._depth > 0

    @contextmanager
    def transaction(self, *, lazy: bool = False) -> Iterator[Database]:
        """One transaction; blocks nest.

        ``lazy`` (outermost block only, else ignored): return without waiting for the disk
        (no sync of the WAL for it). A process crash still loses nothing; a power cut may lose
        the commit, never corrupt the file, and the next durable commit makes it durable too
        (the WAL keeps commits in order). For changes that may be lost safely: the LC forgetting
        reports the GM acknowledged (lost, they are sent again and the GM finds them applied).

        With group commit (``synchronous="full"``, a file) the outermost block commits under the
        lock, then releases it and waits for the WAL's sync (see the class docstring): another
        thread may commit meanwhile, and its commit shares the next sync.

        The outermost block is ``BEGIN IMMEDIATE`` (the write lock is taken at once, so two
        processes never deadlock upgrading a read) and ``COMMIT`` on success. A block inside it
        is a SAVEPOINT: on an exception, only that block's changes are rolled back and the
        exception goes on; the outer block decides (catch it to keep the rest, or let it
        through to roll back everything). A failed ``COMMIT`` (disk full, I/O error, a
        deferred constraint) is rolled back before its error is raised, so the connection is
        never left inside a transaction. The lock is held for the whole outermost block.
        """
        target: int | None = None
        with self._lock:
            savepoint = f"sp{self._depth}" if self._depth else None
            yield from self._block(savepoint, lazy=lazy)
            if savepoint is None and not lazy:
                target = self._needed  # its own commit, and every one it could have read
        if target is not None:
            self._wait_durable(target)

    def _block(self, savepoint: str | None, *, lazy: bool = False) -> Iterator[Database]:
        """The body of ``transaction`` (its lock held)."""
        self._check_alive()
        self._conn.execute(f"SAVEPOINT {savepoint}" if savepoint else "BEGIN IMMEDIATE")
        if savepoint is None:
            self._changes = self._conn.total_changes
        self._depth += 1
        self._after.append([])
        try:
            yield self
        except BaseException:
            self._depth -= 1
            self._after.pop()
            self._undo(savepoint)
            raise
        self._depth -= 1
        hooks = self._after.pop()
        if savepoint is not None:
            self._check_alive()
            self._conn.execute(f"RELEASE {savepoint}")
            self._after[-1].extend(hooks)  # run when (if) the outermost block commits
            return
        self._commit(lazy=lazy)
        for hook in hooks:
            hook()

    def _check_alive(self) -> None:
        """Inside a block, the transaction must still be open: SQLite ends it by itself after
        some errors (SQLITE_FULL, SQLITE_IOERR), and a statement run then would commit alone."""
        if self._depth and not self._conn.in_transaction:
            raise TransactionLost("the transaction was rolled back by SQLite after an earlier error in it")

    def _commit(self, *, lazy: bool = False) -> None:
        if not self._conn.in_transaction:
            raise TransactionLost("the transaction was rolled back by SQLite after an error in it")
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error:
            # A failed COMMIT leaves the transaction open: roll it back, or every later BEGIN
            # would fail and nothing could be written again through this connection.
            self._rollback()
            raise
        self._count_commit(lazy=lazy)

    def _undo(self, savepoint: str | None) -> None:
        if not self._conn.in_transaction:
            return  # SQLite already rolled everything back (SQLITE_FULL, ...)
        if savepoint is None:
            self._rollback()
            return
        try:
            self._conn.execute(f"ROLLBACK TO {savepoint}")
            self._conn.execute(f"RELEASE {savepoint}")
        except sqlite3.Error:
            log.exception("rolling back savepoint %s failed: rolling back the whole transaction", savepoint)
            self._rollback()

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("ROLLBACK of %s failed", self.path)

    def locked(self) -> AbstractContextManager[bool]:
        """The (reentrant) lock that every statement and transaction takes. A repository holds
        it to keep state in memory consistent with its tables without a second lock, whose
        order against this one could deadlock."""
        return self._lock

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once the current transaction commits (at once outside one).

        For in-memory state that must follow the database (a cache, a condition to notify):
        a hook of a block that is rolled back, or of a transaction whose COMMIT fails, never
        runs. Hooks run under the lock, on the committing thread, in the order they were added;
        they must not wait for another thread that uses this database. With group commit they
        run right after COMMIT, before its sync: a hook must not send or answer anything itself
        (what it wakes reads the database, and a read waits for the sync)."""
        with self._lock:
            if self._depth:
                self._after[-1].append(hook)
            else:
                hook()

    # -- statements ------------------------------------------------------------------------
    def execute(self, sql: str, params: Params = ()) -> sqlite3.Cursor:
        """Run one statement (inside the current transaction, or committed on its own).

        For writes: the cursor's ``rowcount`` and ``lastrowid`` say what it did. Read rows
        with :meth:`fetchall` / :meth:`fetchone`, which fetch under the lock. A write outside a
        transaction is durable when this returns (group commit: after the WAL's sync)."""
        with self._lock:
            self._check_alive()
            cur = self._conn.execute(sql, params)
            target = self._autocommitted()
        if target is not None:
            self._wait_durable(target)
        return cur

    def _autocommitted(self) -> int | None:
        """After a statement (the lock held): outside a transaction, a write committed on its
        own is counted, and the commits to wait for returned (None: nothing to wait for)."""
        if self._depth or not self.group_sync:
            return None
        self._count_commit()
        return self._needed if self._durable < self._needed else None

    def execute_all(self, statements: Iterable[str]) -> None:
        """Run several statements (a schema) in one transaction."""
        with self.transaction():
            for statement in statements:
                self.execute(statement)

    def executemany(self, sql: str, rows: Iterable[Params]) -> int:
        """Run one statement for each of ``rows``; the number of rows changed."""
        with self._lock:
            self._check_alive()
            changed = int(self._conn.executemany(sql, rows).rowcount)
            target = self._autocommitted()
        if target is not None:
            self._wait_durable(target)
        return changed

    def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._read(sql, params, sqlite3.Cursor.fetchall)]

    def fetchone(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        row = self._read(sql, params, sqlite3.Cursor.fetchone)
        return None if row is None else tuple(row)

    def _read(self, sql: str, params: Params, take: Callable[[sqlite3.Cursor], R]) -> R:
        """One read: on a reader connection when this thread holds no lock (see ``_reader``),
        else on the writer's. Outside a transaction it returns only once every commit it could
        have seen that is not lazy is durable (at most one sync under way), so nothing read is
        less durable than FULL."""
        outside = self.group_sync and not self._lock._is_owned()  # type: ignore[attr-defined]
        reader = self._reader()
        if reader is not None:
            try:
                cur = reader.execute(sql, params)
                try:
                    found = take(cur)
                finally:
                    cur.close()  # ends the statement's read snapshot now
            finally:
                self._give_back(reader)
        else:
            with self._lock:
                self._check_alive()
                found = take(self._conn.execute(sql, params))
        if outside:
            self._wait_durable(self._needed)
        return found

    # -- readers ---------------------------------------------------------------------------
    READERS_KEPT = 8
    """Idle reader connections kept open (more are opened while more threads read at once)."""

    def _reader(self) -> sqlite3.Connection | None:
        """A reader connection for this thread's read, or None to read on the writer's (in
        memory, or this thread holds the lock: inside a transaction it must see its own changes,
        and under ``locked()`` the caller keeps memory and tables consistent)."""
        if not self.readers or self._lock._is_owned():  # type: ignore[attr-defined]
            return None
        with self._readers_lock:
            if self._closed:
                return None  # the writer's connection raises the usual "closed" error
            if self._readers:
                conn = self._readers.pop()
                conn.set_trace_callback(self._trace)
                return conn
        conn = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=self.busy_timeout
        )
        conn.execute("PRAGMA query_only=1")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.synchronous == 'full' else 'NORMAL'}")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        conn.set_trace_callback(self._trace)
        return conn

    def _give_back(self, conn: sqlite3.Connection) -> None:
        with self._readers_lock:
            if not self._closed and len(self._readers) < self.READERS_KEPT:
                self._readers.append(conn)
                return
        with suppress(sqlite3.Error):
            conn.close()

    # -- what tests and metrics look at ----------------------------------------------------
    @property
    def total_changes(self) -> int:
        """Rows inserted, changed or deleted through this connection since it was opened."""
        with self._lock:
            return int(self._conn.total_changes)

    def trace(self, callback: Callable[[str], object] | None) -> None:
        """Call ``callback`` with the text of every statement run from now on (None: stop),
        on the writer's connection and the readers'."""
        with self._lock, self._readers_lock:
            self._trace = callback
            self._conn.set_trace_callback(callback)
            for conn in self._readers:
                conn.set_trace_callback(callback)
