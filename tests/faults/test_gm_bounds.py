"""The GM's per-node state stays bounded whatever nodes send (docs/reliability.md, "Bounds").

A real GM service (SQLite store and bookkeeping, its intake, executor and controllers) gets
floods through its intake: made-up node names (presence, reports, hellos beyond the node
bound), one node's reports faster than they apply, ever-new workers of one job, acks refusing
made-up objects. Each flood keeps a bounded amount of state, is counted, and logs one line per
spell, not one per message.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from harness.faults import Tally

from lifelong.cloud import intake as intake_mod
from lifelong.cloud.service import GMService, GMSettings
from lifelong.common.codec import encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.topics import Topics

pytestmark = pytest.mark.faults

PREFIX = "t/v1"
TOPICS = Topics(PREFIX)


@pytest.fixture
def gm(tmp_path: Any) -> Iterator[GMService]:
    svc = GMService(
        GMSettings(
            broker="mqtt://127.0.0.1:1", store=f"sqlite:{tmp_path / 'store.db'}", api_port=-1, prefix=PREFIX
        ),
        bus=SimpleNamespace(publish=lambda *a, **k: object(), close=lambda *a, **k: None),  # a fake bus
    )
    svc.start_controllers()
    yield svc
    svc.stop()


def _hello(node: str, epoch: str = "e1") -> bytes:
    body = {"agent": "t", "epoch": epoch, "boot": "b", "resources": [], "outbox": {}}
    return encode(Envelope.new(node=node, kind=CONTROL_KIND, op=Op.HELLO, body=body))


def _presence(node: str) -> bytes:
    return encode(Envelope.new(node=node, kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": "online"}))


def _report(node: str, seq: int, worker: str = "w") -> bytes:
    env = Envelope.new(
        node=node, kind="LifelongLearningJob", ns="default", name="job1", op=Op.REPORT, seq=seq,
        body={"event": "workerInfo", "worker": worker, "info": {"n": seq}},
    )  # fmt: skip
    return encode(env)


def _rejected(svc: GMService) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for m in svc.metrics.upstream_rejected.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }


def _record(scenario: str, tried: int, note: str) -> None:
    t = Tally(f"bounds: {scenario}", "-", runs=1, tried=tried)
    t.note = note
    t.record()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("lifelong")]


def test_made_up_node_names_keep_nothing_and_log_once(
    gm: GMService, caplog: pytest.LogCaptureFixture
) -> None:
    """2000 names that never said hello, each sending a presence and a report: no row, no epoch,
    no log scope per name; every message counted ``unknown_node``; one WARNING per reason."""
    names = [f"ghost-{i}" for i in range(1000)]
    with caplog.at_level(logging.DEBUG, logger="lifelong"):
        for name in names:
            gm.intake.on_message(TOPICS.node_presence(name), _presence(name), False)
            gm.intake.on_message(TOPICS.up(name, "LifelongLearningJob", "default", "job1"), _report(name, 1))
        assert gm.executor.wait_idle(10)
    assert _rejected(gm).get("unknown_node") == 2 * len(names)
    assert gm.state.nodes() == []
    assert gm.intake._epochs == {}
    assert len(gm.intake._logged._seen) == 0
    warnings = _warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert not [r for r in caplog.records if r.exc_info]
    _record("2000 messages from 1000 made-up node names", 2 * len(names), "no row kept; 1 warning")


def test_the_node_bound_is_the_settings(tmp_path: Any) -> None:
    """``lifelong gm --max-nodes N`` reaches the intake's bound (default ``MAX_NODES``)."""
    settings = GMSettings(
        broker="mqtt://127.0.0.1:1", store=f"sqlite:{tmp_path / 'store.db'}", api_port=-1, prefix=PREFIX
    )
    fake_bus = SimpleNamespace(publish=lambda *a, **k: object(), close=lambda *a, **k: None)
    for max_nodes, expected in ((None, intake_mod.MAX_NODES), (20_000, 20_000)):
        svc = GMService(dataclasses.replace(settings, max_nodes=max_nodes), bus=fake_bus)
        try:
            assert svc.intake.max_nodes == expected
        finally:
            svc.stop()


def test_hellos_beyond_the_node_bound_are_refused(gm: GMService, caplog: pytest.LogCaptureFixture) -> None:
    gm.intake.max_nodes = 50
    with caplog.at_level(logging.WARNING, logger="lifelong"):
        for i in range(300):
            gm.intake.on_message(TOPICS.up_ctl(f"n{i}"), _hello(f"n{i}"))
        # a known node's hello (a reconnect, a new epoch) is never refused
        gm.intake.on_message(TOPICS.up_ctl("n0"), _hello("n0", "e2"))
        assert gm.executor.wait_idle(10)
    assert len(gm.state.nodes()) == 50
    assert gm.state.node("n0") is not None and gm.state.node("n0").epoch == "e2"  # type: ignore[union-attr]
    assert _rejected(gm).get("too_many_nodes") == 250
    assert len([r for r in _warnings(caplog) if "too_many_nodes" in r.getMessage()]) == 1
    _record(
        "hellos of 300 new nodes over a bound of 50", 300, "50 kept; 250 refused too_many_nodes; 1 warning"
    )


def test_reports_queued_per_node_are_bounded(gm: GMService) -> None:
    gm.intake.on_message(TOPICS.up_ctl("node-a"), _hello("node-a"))
    assert gm.executor.wait_idle(10)
    gm.intake.max_queued_per_node = 20
    release = threading.Event()
    # Hold every worker thread so the reports stay queued, as under a flood.
    for w in range(len(gm.executor._workers)):
        key = next(k for k in (("block", i) for i in range(10_000)) if gm.executor.worker_of(k) == w)
        gm.executor.submit(key, lambda: release.wait(10) and None)
    try:
        for seq in range(100):
            gm.intake.on_message(
                TOPICS.up("node-a", "LifelongLearningJob", "default", "job1"), _report("node-a", seq)
            )
        assert gm.intake.queued("node-a") == 20
        assert _rejected(gm).get("busy") == 80
    finally:
        release.set()
    assert gm.executor.wait_idle(10)
    assert gm.intake.queued("node-a") == 0
    _record("100 reports of one node at once, bound 20 queued", 100, "20 queued; 80 refused busy (resent)")


def test_applied_records_per_node_are_bounded(gm: GMService) -> None:
    gm.intake.on_message(TOPICS.up_ctl("node-a"), _hello("node-a"))
    assert gm.executor.wait_idle(10)
    gm.state.applied_max_per_node = 500
    for start in range(0, 5000, 250):
        gm.state.mark_applied_many("node-a", "e1", list(range(start, start + 250)))
    count = gm.state.applied_count("node-a")
    assert 500 <= count <= 500 + 1000  # checked every 1000 records (or every bound, if smaller)
    assert gm.state.is_applied("node-a", "e1", 4999)
    assert not gm.state.is_applied("node-a", "e1", 0)
    pruned = sum(
        s.value for m in gm.metrics.applied_pruned.collect() for s in m.samples if s.name.endswith("_total")
    )
    assert pruned == 5000 - count
    _record(
        "5000 applied records of one node, bound 500", 5000, f"{count} kept; lowest seqs forgotten, counted"
    )


def test_worker_infos_per_job_are_bounded(gm: GMService) -> None:
    gm.state.worker_info_max_per_job = 10
    for i in range(40):
        gm.state.put_worker_info("default", "job1", f"w{i}", {"n": i})
    kept = gm.state.worker_info("default", "job1")
    assert len(kept) == 10
    assert "w39" in kept and "w0" not in kept
    evicted = sum(
        s.value
        for m in gm.metrics.worker_info_evicted.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert evicted == 30
    _record("40 workers' infos of one job, bound 10", 40, "10 newest kept; 30 forgotten, counted")


def test_refusals_of_made_up_objects_add_no_label(gm: GMService, caplog: pytest.LogCaptureFixture) -> None:
    gm.intake.on_message(TOPICS.up_ctl("node-a"), _hello("node-a"))
    assert gm.executor.wait_idle(10)
    items = [
        {"kind": f"Kind{i}", "ns": "default", "name": f"x{i}", "rv": "1", "op": "upsert", "refused": "no"}
        for i in range(200)
    ]
    env = Envelope.new(node="node-a", kind=CONTROL_KIND, op=Op.ACK, body={"applied": items})
    with caplog.at_level(logging.WARNING, logger="lifelong"):
        gm.intake.on_message(TOPICS.up_ctl("node-a"), encode(env))
        assert gm.executor.wait_idle(10)
    labels = {s.labels["kind"] for m in gm.metrics.downstream_refused.collect() for s in m.samples}
    assert labels == {"(unmatched)"}
    assert len(gm.delivery._refusals_logged) == 0
    assert not _warnings(caplog)
    _record(
        "ack refusing 200 made-up objects", 200, "counted as (unmatched); no label, no memory, no warning"
    )


def test_spells_log_again_after_a_quiet_minute(gm: GMService, caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    gm.intake.clock = lambda: now[0]
    with caplog.at_level(logging.WARNING, logger="lifelong"):
        for i in range(10):
            gm.intake.on_message(TOPICS.node_presence(f"g{i}"), _presence(f"g{i}"))
        now[0] += intake_mod.SPELL_SECONDS
        gm.intake.on_message(TOPICS.node_presence("g99"), _presence("g99"))
    lines = [r.getMessage() for r in _warnings(caplog)]
    assert len(lines) == 2
    assert "9 more" in lines[1]
