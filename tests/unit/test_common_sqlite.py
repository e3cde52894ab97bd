"""The one SQLite layer (``lifelong.common.sqlite.Database``): nested transactions with
savepoints, a failed COMMIT, SQLite's own rollback after a full database, threads, and a
corrupt file moved aside. Every failure here is provoked for real (a deferred foreign key, a
tiny ``max_page_count``, garbage bytes in the file), never mocked. Group commit's tests hold
the WAL's sync in their hand (``os.fdatasync`` wrapped: it still syncs, when the test lets it)
or make one fail, since a real disk cannot be paused or broken on cue."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.waiting import wait_for

from lifelong.common.sqlite import Database, TransactionLost, moved_aside


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(tmp_path / "x.db", synchronous="normal")
    d.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    yield d
    d.close()


def _rows(db: Database) -> dict[str, int]:
    return {str(k): int(v) for k, v in db.fetchall("SELECT k, v FROM t ORDER BY k")}


def _other_can_write(path: Path) -> bool:
    """Can another connection take the write lock at once (no transaction left open here)?"""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


def test_pragmas_are_set_once_for_every_owner(tmp_path: Path) -> None:
    full = Database(tmp_path / "f.db", busy_timeout=2.5)
    normal = Database(tmp_path / "n.db", synchronous="normal")
    try:
        assert full.fetchone("PRAGMA journal_mode") == ("wal",)
        # FULL on a file is the database's own group commit over a connection in NORMAL
        assert full.group_sync and full.fetchone("PRAGMA synchronous") == (1,)
        assert not normal.group_sync and normal.fetchone("PRAGMA synchronous") == (1,)
        memory = Database(":memory:")
        assert not memory.group_sync and memory.fetchone("PRAGMA synchronous") == (2,)  # FULL
        memory.close()
        assert full.fetchone("PRAGMA busy_timeout") == (2500,)
    finally:
        full.close()
        normal.close()


def test_nested_blocks_commit_once_with_the_outermost(db: Database, tmp_path: Path) -> None:
    with db.transaction():
        db.execute("INSERT INTO t VALUES ('outer', 1)")
        with db.transaction():
            db.execute("INSERT INTO t VALUES ('inner', 2)")
            with db.transaction():
                db.execute("INSERT INTO t VALUES ('innermost', 3)")
        assert db.in_transaction
        assert not _other_can_write(tmp_path / "x.db")  # BEGIN IMMEDIATE: the write lock is ours
        reader = sqlite3.connect(tmp_path / "x.db")
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (0,)  # nothing committed yet
        reader.close()
    assert not db.in_transaction
    assert _rows(db) == {"outer": 1, "inner": 2, "innermost": 3}


def test_an_inner_failure_rolls_back_only_the_inner_block(db: Database) -> None:
    with db.transaction():
        db.execute("INSERT INTO t VALUES ('before', 1)")
        with pytest.raises(RuntimeError, match="inner"), db.transaction():
            db.execute("INSERT INTO t VALUES ('inner', 2)")
            db.execute("UPDATE t SET v = 100 WHERE k = 'before'")
            raise RuntimeError("inner")
        assert _rows(db) == {"before": 1}  # the inner block's changes are gone, the outer's kept
        with db.transaction():  # the outer decides to go on
            db.execute("INSERT INTO t VALUES ('after', 3)")
    assert _rows(db) == {"before": 1, "after": 3}


def test_a_batch_commits_once_and_a_bad_message_rolls_back_alone(db: Database) -> None:
    def apply(key: str) -> None:  # a repository method with a transaction of its own
        with db.transaction():
            db.execute("INSERT INTO t VALUES (?, 1)", (key,))
            if key == "bad":
                raise ValueError(key)

    statements: list[str] = []
    db.trace(statements.append)
    with db.transaction():
        for key in ("m1", "bad", "m2", "m3"):
            try:
                with db.transaction():  # one savepoint per message
                    apply(key)
            except ValueError:
                pass  # logged and counted by the caller; the batch goes on
    db.trace(None)
    assert _rows(db) == {"m1": 1, "m2": 1, "m3": 1}
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]


def test_an_outer_failure_rolls_back_released_inner_blocks_too(db: Database, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outer"), db.transaction():
        with db.transaction():
            db.execute("INSERT INTO t VALUES ('inner', 2)")
        raise ValueError("outer")
    assert _rows(db) == {}
    assert _other_can_write(tmp_path / "x.db")


def test_a_failed_commit_is_rolled_back_and_the_connection_writes_again(tmp_path: Path) -> None:
    # A deferred foreign key is checked at COMMIT: the COMMIT fails and SQLite keeps the
    # transaction open, as it does after a disk full or an I/O error at commit.
    db = Database(tmp_path / "fk.db")
    try:
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        db.execute("CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
        with pytest.raises(sqlite3.IntegrityError), db.transaction():
            db.execute("INSERT INTO parent VALUES (1)")
            with db.transaction():
                db.execute("INSERT INTO child VALUES (99)")  # no parent 99: fails only at COMMIT
        assert not db.in_transaction
        assert _other_can_write(tmp_path / "fk.db")  # the write lock is not held any more
        assert db.fetchall("SELECT id FROM parent") == []  # nothing of it was kept
        with db.transaction():  # and the next transaction works
            db.execute("INSERT INTO parent VALUES (2)")
            db.execute("INSERT INTO child VALUES (2)")
        assert db.fetchall("SELECT pid FROM child") == [(2,)]
    finally:
        db.close()


def test_a_full_database_ends_the_transaction_and_nothing_commits_alone(tmp_path: Path) -> None:
    # On SQLITE_FULL SQLite rolls the whole transaction back by itself. A block that catches
    # the error and goes on must not write the rest outside any transaction.
    db = Database(tmp_path / "small.db")
    try:
        db.execute("CREATE TABLE t (k TEXT, v BLOB)")
        pages = db.fetchone("PRAGMA page_count")
        assert pages is not None
        db.execute(f"PRAGMA max_page_count={int(pages[0]) + 4}")
        with pytest.raises(TransactionLost), db.transaction():
            db.execute("INSERT INTO t VALUES ('small', x'00')")
            with pytest.raises(sqlite3.OperationalError, match="full"), db.transaction():
                db.execute("INSERT INTO t VALUES ('big', zeroblob(1000000))")
            db.execute("INSERT INTO t VALUES ('after', x'00')")  # would commit on its own
        assert db.fetchall("SELECT k FROM t") == []
        assert not db.in_transaction
        db.execute("INSERT INTO t VALUES ('later', x'00')")  # the database works again
        assert db.fetchall("SELECT k FROM t") == [("later",)]
    finally:
        db.close()


def test_after_commit_hooks_run_only_for_what_commits(db: Database) -> None:
    ran: list[str] = []
    db.after_commit(lambda: ran.append("alone"))  # outside a transaction: at once
    with db.transaction():
        db.after_commit(lambda: ran.append("outer"))
        with db.transaction():
            db.after_commit(lambda: ran.append("inner kept"))
        with pytest.raises(RuntimeError), db.transaction():
            db.after_commit(lambda: ran.append("inner rolled back"))
            raise RuntimeError
        assert ran == ["alone"]  # nothing before the COMMIT
    assert ran == ["alone", "outer", "inner kept"]
    with pytest.raises(RuntimeError), db.transaction():
        db.after_commit(lambda: ran.append("outer rolled back"))
        raise RuntimeError
    assert ran == ["alone", "outer", "inner kept"]


def test_threads_share_one_database_and_never_see_half_a_transaction(db: Database) -> None:
    db.execute("INSERT INTO t VALUES ('a', 0), ('b', 0), ('n', 0)")
    writers, rounds = 4, 150
    torn: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for _ in range(rounds):
                with db.transaction():
                    row = db.fetchone("SELECT v FROM t WHERE k='n'")
                    assert row is not None
                    db.execute("UPDATE t SET v = ? WHERE k = 'n'", (int(row[0]) + 1,))  # read-modify-write
                    db.execute("UPDATE t SET v = v + 1 WHERE k = 'a'")
                    with db.transaction():
                        db.execute("UPDATE t SET v = v - 1 WHERE k = 'b'")
        except BaseException as exc:  # reported below, with the thread's own traceback
            errors.append(exc)

    def read() -> None:
        while not done.is_set():
            row = db.fetchone("SELECT (SELECT v FROM t WHERE k='a'), (SELECT v FROM t WHERE k='b')")
            assert row is not None
            if row[0] + row[1] != 0:
                torn.append((row[0], row[1]))

    threads = [threading.Thread(target=write) for _ in range(writers)]
    reader = threading.Thread(target=read)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    reader.join(10)
    assert errors == []
    assert torn == []
    assert _rows(db) == {"a": writers * rounds, "b": -writers * rounds, "n": writers * rounds}


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not an SQLite file at all" * 100)
    path.with_name(path.name + "-wal").write_bytes(b"wal garbage")


def test_a_corrupt_file_is_moved_aside_with_its_wal_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "state" / "lc.db"
    path.parent.mkdir()
    _garbage(path)
    db = Database(path, recover_corrupt=True)
    try:
        assert db.moved_aside is not None
        assert db.moved_aside.read_bytes() == b"this is not an SQLite file at all" * 100
        assert Path(f"{db.moved_aside}-wal").read_bytes() == b"wal garbage"
        assert moved_aside(path) == [db.moved_aside]
        db.execute("CREATE TABLE t (x)")  # the new database works
    finally:
        db.close()
    again = Database(path, recover_corrupt=True)
    try:
        assert again.moved_aside is None  # a sound file is left alone
        assert again.fetchall("SELECT name FROM sqlite_master") == [("t",)]
    finally:
        again.close()


def test_a_damaged_page_is_found_by_the_check_at_open(tmp_path: Path) -> None:
    path = tmp_path / "lc.db"
    db = Database(path)
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    db.executemany("INSERT INTO t VALUES (?, ?)", ((i, "x" * 200) for i in range(200)))
    db.close()  # checkpointed: everything is in the file
    with path.open("r+b") as fh:
        fh.seek(2 * 4096 + 8)
        fh.write(os.urandom(4096 - 16))
    damaged = path.read_bytes()
    again = Database(path, recover_corrupt=True)
    try:
        assert again.moved_aside is not None and again.moved_aside.read_bytes() == damaged
        assert again.fetchall("SELECT name FROM sqlite_master") == []
    finally:
        again.close()


def test_without_recovery_or_when_not_corrupt_nothing_is_moved(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    _garbage(path)
    with pytest.raises(sqlite3.DatabaseError):
        Database(path)  # the GM's databases: the error, and the file left where it is
    assert moved_aside(path) == [] and path.exists()
    busy = tmp_path / "dir.db"
    busy.mkdir()  # cannot be opened, but is not a corrupt database
    with pytest.raises(sqlite3.OperationalError):
        Database(busy, recover_corrupt=True)
    assert moved_aside(busy) == [] and busy.is_dir()


def test_memory_database_for_tests() -> None:
    db = Database(":memory:")
    try:
        assert db.memory
        with db.transaction():
            db.execute("CREATE TABLE t (x)")
            db.execute("INSERT INTO t VALUES (1)")
        assert db.fetchall("SELECT x FROM t") == [(1,)]
    finally:
        db.close()


def _count(path: Path) -> int:
    """Rows of ``t`` as another connection sees them (no wait for any sync)."""
    other = sqlite3.connect(path)
    try:
        return int(other.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        other.close()


def _waiting(db: Database) -> int:
    """Threads waiting for the sync under way (CPython's ``Condition`` keeps its waiters)."""
    return len(db._synced._waiters)  # type: ignore[attr-defined]


class _SlowDisk:
    """Stands in for ``os.fdatasync`` of ``common/sqlite.py``: counts the syncs, each of which
    blocks until the test lets it finish (a disk whose sync the test holds in its hand)."""

    def __init__(self, real: Callable[[int], None]) -> None:
        self.real = real
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.started.release()
        assert self.release.wait(10), "the test never let the sync finish"
        self.real(fd)


def test_a_lazy_transaction_commits_without_a_sync_and_the_next_one_syncs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = Database(tmp_path / "f.db")  # synchronous FULL: group commit
    syncs: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr("lifelong.common.sqlite.os.fdatasync", lambda fd: (syncs.append(fd), real(fd)))
    try:
        full.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        syncs.clear()
        with full.transaction(lazy=True):
            full.execute("INSERT INTO t VALUES ('lazy', 1)")
            with full.transaction(lazy=False):  # an inner block follows the outermost
                full.execute("INSERT INTO t VALUES ('inner', 2)")
        assert syncs == []  # committed, not synced
        with full.transaction():
            full.execute("INSERT INTO t VALUES ('durable', 3)")
        assert len(syncs) == 1  # the WAL's sync, covering the lazy commit before it too
        assert os.fstat(syncs[0]).st_ino == os.stat(tmp_path / "f.db-wal").st_ino
        other = sqlite3.connect(tmp_path / "f.db")
        try:
            assert other.execute("SELECT count(*) FROM t").fetchone() == (3,)
        finally:
            other.close()
        with pytest.raises(RuntimeError), full.transaction(lazy=True):  # rolled back: nothing synced
            full.execute("INSERT INTO t VALUES ('gone', 4)")
            raise RuntimeError("no")
        assert len(syncs) == 1
        assert full.fetchone("SELECT count(*) FROM t") == (3,)
    finally:
        full.close()


def test_commits_made_during_a_sync_share_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: while one transaction waits for its sync (held by the test), eight others
    commit without waiting for the lock, and one more sync makes all eight durable; none of them
    returns before a sync covers it."""
    db = Database(tmp_path / "g.db", readers=True)
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    disk = _SlowDisk(os.fdatasync)
    monkeypatch.setattr("lifelong.common.sqlite.os.fdatasync", disk)
    returned: list[str] = []

    def write(key: str) -> None:
        with db.transaction():
            db.execute("INSERT INTO t VALUES (?)", (key,))
        returned.append(key)

    first = threading.Thread(target=write, args=("first",))
    first.start()
    try:
        assert disk.started.acquire(timeout=10)  # the first sync is under way, held
        others = [threading.Thread(target=write, args=(f"k{i}",)) for i in range(8)]
        for t in others:
            t.start()
        # every one commits (the lock is free while the first waits for the disk) and waits
        # for the next sync; none has returned, since no sync covers them yet
        wait_for(lambda: _count(tmp_path / "g.db") == 9, what="nine commits", timeout=10)
        wait_for(lambda: _waiting(db) == 8, what="eight callers waiting for a sync", timeout=10)
        assert returned == []
    finally:
        disk.release.set()
    first.join(10)
    for t in others:
        t.join(10)
    assert sorted(returned) == sorted(["first"] + [f"k{i}" for i in range(8)])
    assert disk.calls == 2  # the first commit's sync, then one for the eight
    db.close()


def test_a_read_waits_for_the_sync_of_what_it_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread's read outside a transaction may see a commit whose sync is under way; it
    returns only once that sync is done, so nothing it acts on can be taken back by a power cut."""
    db = Database(tmp_path / "w.db", readers=True)
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    disk = _SlowDisk(os.fdatasync)
    monkeypatch.setattr("lifelong.common.sqlite.os.fdatasync", disk)
    read: list[object] = []
    writer = threading.Thread(target=lambda: db.execute("INSERT INTO t VALUES ('x')"))
    writer.start()
    try:
        assert disk.started.acquire(timeout=10)
        reader = threading.Thread(target=lambda: read.append(db.fetchone("SELECT k FROM t")))
        reader.start()
        wait_for(lambda: _waiting(db) == 1, what="the reader waiting for the sync", timeout=10)
        assert read == []
    finally:
        disk.release.set()
    writer.join(10)
    reader.join(10)
    assert read == [("x",)] and disk.calls == 1
    db.close()


def test_a_read_after_a_lazy_commit_does_not_sync_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lazy commit may be lost by design, so another thread's read of it does not wait for a
    sync (the LC's publisher reads its outbox after every lazy commit of the GM's acks); a read
    after a commit that is not lazy does."""
    db = Database(tmp_path / "l.db", readers=True)
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    syncs: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr("lifelong.common.sqlite.os.fdatasync", lambda fd: (syncs.append(fd), real(fd)))
    with db.transaction(lazy=True):
        db.execute("INSERT INTO t VALUES ('lazy')")
    read: list[object] = []
    reader = threading.Thread(target=lambda: read.append(db.fetchall("SELECT k FROM t")))
    reader.start()
    reader.join(10)
    assert read == [[("lazy",)]] and syncs == []
    db.execute("INSERT INTO t VALUES ('durable')")  # not lazy: synced before it returns
    assert len(syncs) == 1
    db.close()


def test_a_failed_sync_is_raised_and_the_next_caller_syncs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(tmp_path / "e.db")
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    real = os.fdatasync
    failures = [OSError(5, "Input/output error")]

    def flaky(fd: int) -> None:
        if failures:
            raise failures.pop()
        real(fd)

    monkeypatch.setattr("lifelong.common.sqlite.os.fdatasync", flaky)
    with pytest.raises(OSError, match="Input/output"), db.transaction():
        db.execute("INSERT INTO t VALUES ('a')")
    syncs = db.syncs
    with db.transaction():
        db.execute("INSERT INTO t VALUES ('b')")
    assert db.syncs == syncs + 1
    assert db.fetchall("SELECT k FROM t ORDER BY k") == [("a",), ("b",)]  # committed, then durable
    db.close()


def test_sync_checkpoints_between_transactions_only(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db")
    try:
        db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        with db.transaction(lazy=True):
            db.execute("INSERT INTO t VALUES ('a', 1)")
            assert db.sync() is False  # inside a transaction: nothing done, nothing broken
        assert db.sync() is True
        assert db.fetchall("SELECT k, v FROM t") == [("a", 1)]
    finally:
        db.close()


def test_a_read_is_not_blocked_by_a_writer_holding_its_transaction(tmp_path: Path) -> None:
    """Another thread's read outside a transaction answers at once with the last commit while a
    writer holds its transaction open (WAL: a reader connection of its own); the writer's own
    reads inside its transaction see its changes; after the commit every thread sees them."""
    db = Database(tmp_path / "r.db", readers=True)
    try:
        db.execute_all(["CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)"])
        db.execute("INSERT INTO t VALUES ('a', 1)")
        inside = threading.Event()
        release = threading.Event()
        seen_by_writer: list[tuple[object, ...] | None] = []

        def writer() -> None:
            with db.transaction():
                db.execute("UPDATE t SET v=2 WHERE k='a'")
                seen_by_writer.append(db.fetchone("SELECT v FROM t WHERE k='a'"))
                inside.set()
                release.wait(10)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert inside.wait(10)
            answers: list[object] = []
            reader = threading.Thread(
                target=lambda: answers.append(
                    (db.fetchone("SELECT v FROM t WHERE k='a'"), db.fetchall("SELECT k FROM t"))
                )
            )
            reader.start()
            reader.join(5)  # a deadline: blocked on the writer's lock, it would still be waiting
            assert answers == [((1,), [("a",)])]  # the last commit, not the writer's open change
        finally:
            release.set()
            thread.join(10)
        assert seen_by_writer == [(2,)]
        after: list[object] = []
        t2 = threading.Thread(target=lambda: after.append(db.fetchone("SELECT v FROM t WHERE k='a'")))
        t2.start()
        t2.join(5)
        assert after == [(2,)]
    finally:
        db.close()
