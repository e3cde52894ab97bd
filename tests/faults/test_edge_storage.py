"""The LC's storage fails: its state directory fills up, or its SQLite file is corrupted.

* Disk full (a 16 MiB tmpfs mounted for the test, root only): the LC logs a clear error, keeps
  running, corrupts nothing, loses nothing, and catches up once space returns.
* A corrupted ``lc.db`` (garbage header, damaged page): detected at start, moved aside next to
  it with a clear log line and the ``lifelong_lc_db_moved_aside`` metric, never deleted; the
  LC starts a new database and the GM gives it back its desired state.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.brokers import Broker
from harness.faults import Rig, Tally, dataset_manifest, epoch_of, job_manifest
from harness.waiting import free_port, wait_for

from lifelong.edge.db import Store, moved_aside

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs for the LC's state directory (needs root and mount(2))."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path) -> Path:
    """Fill the file system holding ``directory`` to the last byte; return the filler file."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 16)
    with filler.open("wb", buffering=0) as fh:
        while True:
            try:
                fh.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        for size in (4096, 512, 1):  # the tail, byte by byte
            while True:
                try:
                    fh.write(b"\0" * size)
                except OSError:
                    break
    return filler


def test_disk_full_clear_error_no_corruption_and_recovery(
    tmp_path: Path, tmpfs: Path, broker: Broker
) -> None:
    tally = Tally("LC state dir full (tmpfs), then space returns", broker.kind)
    rig = Rig(tmp_path, broker.url, broker.prefix)
    # The state directory on the tmpfs, the log file not (it must tell what happened).
    old_state = str(rig.lc.state_dir)
    rig.lc.state_dir = tmpfs / "lc"
    rig.lc.args = [str(rig.lc.state_dir) if a == old_state else a for a in rig.lc.args]
    try:
        rig.start_gm()
        rig.start_lc()
        rig.apply()
        rig.wait_in_sync()
        data2 = tmp_path / "data" / "full.txt"
        data2.write_text("x\n")
        rig.apply_objects([dataset_manifest("ds2", data2)])
        wait_for(lambda: _samples(rig, "ds2") == 1, timeout=30, what="the first dataset count")

        filler = _fill(tmpfs)
        # Work that must be written while the disk is full: new desired state from the GM
        # (big enough not to fit the WAL's slack) and new samples to count and report.
        big = {"blob": "y" * 100_000}
        rig.apply_objects(
            [job_manifest(f"full{i}", "ds1", tmp_path / "out", annotations=big) for i in range(6)]
        )
        with data2.open("a") as fh:
            fh.writelines(f"more {i}\n" for i in range(9))
        wait_for(
            lambda: "database or disk is full" in rig.lc.log_path.read_text(errors="replace"),
            timeout=30,
            what=f"the LC's disk-full error\n{rig.lc.log_tail()}",
        )
        rig.lc.check_alive()
        assert _samples(rig, "ds2") == 1  # not reported: the LC could not record it
        assert "full0" not in rig.lc_jobs()

        filler.unlink()  # space returns
        t0 = time.monotonic()
        rig.wait_in_sync(timeout=60)
        wait_for(lambda: _samples(rig, "ds2") == 10, timeout=30, what="the dataset count after recovery")
        took = time.monotonic() - t0
        assert _integrity(rig.lc.state_dir / "lc.db") == "ok"
        assert "writable again" in rig.lc.log_path.read_text(errors="replace")
        tally.runs = 1
        tally.tried = tally.applied = 7  # 6 jobs stored on the edge, 1 dataset count at the GM
        tally.converge_seconds.append(took)
        tally.note = "16 MiB tmpfs filled; 6 jobs down + a dataset count up while full; integrity_check ok"
        tally.record()
    finally:
        rig.stop()


def _samples(rig: Rig, name: str) -> int | None:
    ds = rig.gm.get("Dataset", name) or {}
    value = (ds.get("status") or {}).get("numberOfSamples")
    return value if isinstance(value, int) else None


def _corrupt_header(db: Path) -> None:
    with db.open("r+b") as fh:
        fh.write(b"this is not an SQLite file at all")


def _corrupt_page(db: Path) -> None:
    """Overwrite the middle of a b-tree page (the database has several pages)."""
    size = db.stat().st_size
    page = 4096
    assert size >= 3 * page, size
    with db.open("r+b") as fh:
        fh.seek(2 * page + 8)
        fh.write(os.urandom(page - 16))


@pytest.mark.parametrize("damage", [_corrupt_header, _corrupt_page], ids=["header", "page"])
def test_corrupt_edge_database_is_moved_aside_and_the_lc_recovers(
    tmp_path: Path, broker: Broker, damage: object
) -> None:
    tally = Tally(f"corrupt lc.db ({getattr(damage, '__name__', '')[9:]})", broker.kind)
    metrics_port = free_port()
    rig = Rig(tmp_path, broker.url, broker.prefix, lc_extra=["--metrics-port", str(metrics_port)])
    try:
        rig.start_gm()
        rig.start_lc()
        rig.apply()
        rig.apply_objects([job_manifest(f"c{i}", "ds1", tmp_path / "out") for i in range(30)])
        rig.wait_in_sync()
        old_epoch = epoch_of(rig.lc.state_dir)
        assert rig.lc.terminate() == 0  # checkpointed: everything is in lc.db itself
        db = rig.lc.state_dir / "lc.db"
        before = db.read_bytes()
        assert callable(damage)
        damage(db)
        damaged = db.read_bytes()
        assert damaged != before

        t0 = time.monotonic()
        rig.start_lc()
        rig.wait_in_sync()
        took = time.monotonic() - t0
        log_text = rig.lc.log_path.read_text(errors="replace")
        assert "is corrupt" in log_text and "moved aside" in log_text, rig.lc.log_tail()
        aside = moved_aside(db)
        assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept, byte for byte
        assert epoch_of(rig.lc.state_dir) != old_epoch
        assert _integrity(db) == "ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert "lifelong_lc_db_moved_aside 1.0" in text, text
        tally.runs = 1
        tally.tried = tally.applied = len(rig.gm_jobs())  # desired state given back to the new database
        tally.converge_seconds.append(took)
        tally.note = "moved aside, kept byte for byte; new epoch; desired state resynced (jobs down)"
        tally.record()
    finally:
        rig.stop()


def test_store_moves_a_corrupt_file_aside_and_never_deletes_it(tmp_path: Path) -> None:
    """The unit view: a garbage file at the database path is renamed, not removed."""
    db = tmp_path / "state" / "lc.db"
    db.parent.mkdir()
    db.write_bytes(b"garbage" * 1000)
    (db.parent / "lc.db-wal").write_bytes(b"wal garbage")
    store = Store(db)
    try:
        assert store.moved_aside is not None and store.moved_aside.read_bytes() == b"garbage" * 1000
        assert Path(str(store.moved_aside) + "-wal").read_bytes() == b"wal garbage"
        assert moved_aside(db) == [store.moved_aside]
    finally:
        store.close()
    again = Store(db)  # a sound database is left alone
    try:
        assert again.moved_aside is None
    finally:
        again.close()
    shutil.rmtree(db.parent)
