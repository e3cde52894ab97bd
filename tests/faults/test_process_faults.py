"""Processes killed and the link cut, end to end: a real broker (mosquitto, the embedded
amqtt), a real ``lifelong gm`` and a real ``lifelong lc``.

Every scenario queues ``workerInfo`` reports in the LC's outbox (see ``harness.faults`` for
how reports are counted), does its damage, and waits until every report is applied and the
outbox is empty. It asserts zero lost and zero duplicated applications, and records its
figures (``LIFELONG_FAULT_RESULTS``) for docs/reliability.md. Repeated scenarios run
``LIFELONG_FAULT_REPEAT`` times (default 3; ``make faults`` runs more); each kill happens
after a random fraction of the backlog was applied.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.brokers import Broker
from harness.faults import (
    NODE,
    Rig,
    Tally,
    applied_counts,
    dataset_manifest,
    epoch_of,
    job_manifest,
    queue_reports,
    repeat,
)
from harness.waiting import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

BACKLOG = int(os.environ.get("LIFELONG_FAULT_BACKLOG", "1000"))
CUT_SECONDS = float(os.environ.get("LIFELONG_FAULT_CUT_SECONDS", "20"))


@pytest.fixture
def rig(tmp_path: Path, broker: Broker) -> Iterator[Rig]:
    r = Rig(tmp_path, broker.url, broker.prefix)
    r.start_gm()
    r.start_lc()
    r.apply()
    yield r
    r.stop()


def _applied(rig: Rig, epoch: str, seqs: list[int]) -> int:
    counts = applied_counts(rig.gm)
    return sum(1 for s in seqs if counts[(epoch, s)])


def _wait_applied(rig: Rig, epoch: str, seqs: list[int], at_least: int, proc_name: str) -> None:
    wait_for(
        lambda: _applied(rig, epoch, seqs) >= at_least,
        timeout=60,
        interval=0.01,
        what=f"{at_least} reports applied before killing the {proc_name}\n{rig.gm.log_tail(20)}",
    )


def test_lc_sigkilled_at_random_points_while_draining(rig: Rig, broker: Broker) -> None:
    tally = Tally("LC SIGKILL at a random point of a backlog drain", broker.kind)
    rng = random.Random()
    epoch = epoch_of(rig.lc.state_dir)
    for run in range(repeat()):
        rig.lc.kill()
        seqs = queue_reports(rig.lc.state_dir, run * BACKLOG, BACKLOG)
        rig.lc.start()
        _wait_applied(rig, epoch, seqs, int(BACKLOG * rng.uniform(0.05, 0.9)), "LC")
        rig.lc.kill()  # SIGKILL mid-drain
        t0 = time.monotonic()
        rig.lc.start()
        rig.wait_drained(epoch, seqs)
        tally.converge_seconds.append(time.monotonic() - t0)
        tally.runs += 1
        tally.count(rig.gm, epoch, seqs)
    tally.note = f"backlog {BACKLOG} per run"
    tally.record()
    assert (tally.lost, tally.duplicated) == (0, 0), tally


def test_gm_sigkilled_while_applying_reports(rig: Rig, broker: Broker) -> None:
    tally = Tally("GM SIGKILL while applying a backlog", broker.kind)
    rng = random.Random()
    epoch = epoch_of(rig.lc.state_dir)
    bursts = 0
    for run in range(repeat()):
        seqs = queue_reports(rig.lc.state_dir, run * BACKLOG, BACKLOG)  # into the running LC
        _wait_applied(rig, epoch, seqs, int(BACKLOG * rng.uniform(0.05, 0.9)), "GM")
        rig.gm.kill()  # while it applies bursts of reports, each in one transaction
        bursts += _bursts(rig)
        t0 = time.monotonic()
        rig.gm.start()
        rig.gm.wait_ready()
        rig.wait_drained(epoch, seqs)
        tally.converge_seconds.append(time.monotonic() - t0)
        tally.runs += 1
        tally.count(rig.gm, epoch, seqs)
    tally.note = f"backlog {BACKLOG} per run; LC ack timeout 30 s (not waited for)"
    tally.record()
    assert (tally.lost, tally.duplicated) == (0, 0), tally
    assert bursts, "the GM applied no burst of several reports before a kill: no kill hit the burst path"


def _bursts(rig: Rig) -> int:
    """Bursts of several reports the GM has applied in one transaction, in all its lives."""
    return rig.gm.log_path.read_text(errors="replace").count("applied a burst of")


def _hellos(rig: Rig) -> int:
    return rig.gm.log_path.read_text(errors="replace").count("said hello")


def test_gm_sigkilled_while_resyncing_a_node(rig: Rig, broker: Broker) -> None:
    """While the LC was away, jobs were created, changed and deleted; the GM is killed right
    after the LC's hello, in the middle of sending it the difference, and restarted."""
    tally = Tally("GM SIGKILL while resyncing a node (hello diff)", broker.kind)
    epoch = epoch_of(rig.lc.state_dir)
    out = rig.tmp / "out"
    names = [f"r{i}" for i in range(20)]
    rig.apply_objects([job_manifest(n, "ds1", out) for n in names])
    rig.wait_in_sync()
    for run in range(repeat()):
        rig.lc.kill()
        wait_for(lambda: not rig.gm.node_online(NODE), timeout=30, what="the LC seen offline")
        # Downstream work for the resync: new jobs, changed jobs, deleted jobs.
        new = [f"n{run}-{i}" for i in range(10)]
        rig.apply_objects([job_manifest(n, "ds1", out) for n in new])
        rig.apply_objects([job_manifest(n, "ds1", out, annotations={"run": str(run)}) for n in names[:5]])
        gone = names.pop()
        rig.delete("LifelongLearningJob", gone)
        seqs = queue_reports(rig.lc.state_dir, run * 200, 200)
        hellos = _hellos(rig)
        rig.lc.start()
        wait_for(
            lambda h=hellos: _hellos(rig) > h,
            timeout=30,
            interval=0.005,
            what="the LC's hello at the GM",
        )
        rig.gm.kill()  # in the middle of the resync
        t0 = time.monotonic()
        rig.gm.start()
        rig.gm.wait_ready()
        rig.wait_in_sync()
        rig.wait_drained(epoch, seqs)
        tally.converge_seconds.append(time.monotonic() - t0)
        tally.runs += 1
        tally.count(rig.gm, epoch, seqs)
        assert gone not in rig.lc_jobs()
    tally.note = "20-30 jobs; LC holds exactly the GM's jobs and versions after each run"
    tally.record()
    assert (tally.lost, tally.duplicated) == (0, 0), tally


def _apply_by_client(rig: Rig, objs: list[dict[str, Any]]) -> None:
    rig.gm.cli("apply", "-f", "-", stdin=yaml.safe_dump_all(objs))


def test_broker_restarted_without_persistence_while_traffic_flows_both_ways(rig: Rig, broker: Broker) -> None:
    tally = Tally("broker restart (no persistence), traffic both ways", broker.kind)
    rng = random.Random()
    epoch = epoch_of(rig.lc.state_dir)
    out = rig.tmp / "out"
    for run in range(repeat()):
        seqs = queue_reports(rig.lc.state_dir, run * BACKLOG, BACKLOG)  # upstream
        _wait_applied(rig, epoch, seqs, int(BACKLOG * rng.uniform(0.05, 0.9)), "broker")

        # Even runs apply with the client, whose start keeps the broker down for a second or two;
        # odd runs from this process, for an outage of ~0.1 s, in which the LC reconnects and
        # publishes while the GM subscribes again (that window once stalled 66 reports: their
        # publisher's list was marked sent after the GM's hello had made them due again).
        def apply(objs: list[dict[str, Any]], by_client: bool = run % 2 == 0) -> None:
            if by_client:
                _apply_by_client(rig, objs)
            else:
                rig.apply_objects(objs)

        apply([job_manifest(f"b{run}-{i}", "ds1", out) for i in range(5)])  # downstream
        broker.stop()  # SIGTERM; persistence off: retained presence, sessions and queues are gone
        apply([job_manifest(f"c{run}-{i}", "ds1", out) for i in range(3)])  # while down
        t0 = time.monotonic()
        broker.start()
        rig.wait_drained(epoch, seqs)
        rig.wait_in_sync()
        tally.converge_seconds.append(time.monotonic() - t0)
        tally.runs += 1
        tally.count(rig.gm, epoch, seqs)
    tally.note = f"backlog {BACKLOG} up, 8 jobs down per run"
    tally.record()
    assert (tally.lost, tally.duplicated) == (0, 0), tally


def _queued_job_events(state_dir: Path, event: str) -> int:
    conn = sqlite3.connect(f"file:{state_dir / 'lc.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT count(*) FROM outbox WHERE kind='LifelongLearningJob' AND name='trig' AND body LIKE ?",
            (f'%"event":"{event}"%',),
        ).fetchone()
    finally:
        conn.close()
    return int(rows[0])


def test_link_cut_while_the_lc_monitors_triggers_and_reports(rig: Rig, broker: Broker) -> None:
    """The broker is unreachable for CUT_SECONDS: the LC counts new samples, fires a trigger
    and queues its reports; after the link is back everything arrives, once."""
    tally = Tally("link cut (broker down) while the LC monitors and triggers", broker.kind)
    epoch = epoch_of(rig.lc.state_dir)
    data2 = rig.tmp / "data" / "trig.txt"
    data2.write_text("".join(f"t{i}\n" for i in range(3)))
    worker = [sys.executable, "-c", "import time; time.sleep(60)"]
    rig.apply_objects(
        [
            dataset_manifest("ds2", data2),
            job_manifest("trig", "ds2", rig.tmp / "out", threshold=5, command=worker),
        ]
    )
    rig.wait_in_sync()
    assert rig.gm.conditions("trig") == [("Train", "Waiting")]

    broker.stop()
    cut = time.monotonic()
    with data2.open("a") as fh:
        fh.writelines(f"new {i}\n" for i in range(10))  # 13 samples > 5: the trigger fires offline
    wait_for(
        lambda: _queued_job_events(rig.lc.state_dir, "ready") == 1,
        timeout=CUT_SECONDS,
        what="the LC's Train/ready queued while offline",
    )
    seqs = queue_reports(rig.lc.state_dir, 0, BACKLOG)  # more reports pile up meanwhile
    wait_for(lambda: time.monotonic() - cut >= CUT_SECONDS, timeout=CUT_SECONDS + 1, what="the cut")
    rig.lc.check_alive()
    t0 = time.monotonic()
    broker.start()
    rig.wait_drained(epoch, seqs)

    def running() -> bool:
        got = rig.gm.conditions("trig")
        assert (
            got
            == [("Train", "Waiting"), ("Train", "Ready"), ("Train", "Starting"), ("Train", "Running")][
                : len(got)
            ]
        ), got
        return len(got) == 4

    wait_for(running, timeout=60, interval=0.1, what="the job trained on the offline trigger")
    ds = rig.gm.get("Dataset", "ds2") or {}
    wait_for(
        lambda: ((rig.gm.get("Dataset", "ds2") or {}).get("status") or {}).get("numberOfSamples") == 13,
        timeout=30,
        what=f"the dataset count counted offline at the GM: {ds.get('status')}",
    )
    tally.converge_seconds.append(time.monotonic() - t0)
    tally.runs = 1
    tally.count(rig.gm, epoch, seqs)
    rig.delete("LifelongLearningJob", "trig")  # stops its worker
    wait_for(lambda: "trig" not in rig.lc_jobs(), timeout=30, what="the job gone from the LC")
    tally.note = f"cut {CUT_SECONDS:.0f} s; trigger fired offline, applied once; dataset count arrived"
    tally.record()
    assert (tally.lost, tally.duplicated) == (0, 0), tally
