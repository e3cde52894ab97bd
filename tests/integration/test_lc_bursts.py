"""The LC applies a burst of downstream messages in one transaction and acknowledges it with
one ``ack`` sent after the commit (docs/protocol.md, "ack on up/_ctl"; docs/performance.md):
real brokers, the LC's own session and bus client, the GM played by the test with plain paho.

* a burst of N upserts: one commit (``Session.commits``, also the metric
  ``lifelong_lc_downstream_commits_total``) and one ``ack`` naming all N, seen on the bus;
* a burst with one item that cannot be stored: it rolls back alone and is not acknowledged
  (the GM resends it); the items before and after it are stored and acknowledged in the
  burst's one ack;
* a real ``lifelong lc`` SIGKILLed after it committed a burst whose ack never reached the GM:
  the GM sends the burst again, the LC acknowledges every message as stale, and holds each
  object once at its version (nothing lost, nothing applied twice).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.brokers import Broker
from harness.lc_gm import FakeGM, LCProcess
from harness.lc_objects import NS, job
from harness.waiting import wait_for

from lifelong.common.bus import BusClient, Credentials
from lifelong.common.codec import Codec
from lifelong.common.envelope import Envelope
from lifelong.common.topics import Topics
from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox
from lifelong.edge.session import Session

NODE = "node-a"
BURST = 40
JOB = "LifelongLearningJob"


@pytest.fixture
def gm(broker: Broker, prefix: str) -> Iterator[FakeGM]:
    g = FakeGM(broker.host, broker.port, prefix, NODE)
    yield g
    g.close()


@pytest.fixture
def session(broker: Broker, prefix: str, tmp_path: Path) -> Iterator[Session]:
    """The LC's session over a real bus client, without its thread: the test runs its steps."""
    topics = Topics(prefix)
    store = Store(tmp_path / "lc.db")
    bus: BusClient | None = None

    def publish(topic: str, payload: bytes, retain: bool) -> None:
        assert bus is not None
        bus.publish(topic, payload, qos=1, retain=retain)

    s = Session(
        store,
        Outbox(store),
        node=NODE,
        topics=topics,
        codec=Codec.MSGPACK,
        max_payload=256 * 1024,
        publish=publish,
    )
    bus = BusClient(
        client_id=NODE,
        address=broker.url,
        credentials=Credentials(NODE, ""),
        on_connect=s.handle_connect,
        on_disconnect=s.handle_disconnect,
    )
    bus.subscribe(topics.node_down_filter(NODE), s.handle_message)
    bus.start()
    try:
        wait_for(lambda: s.queued() >= 1, timeout=10, what="the connect")
        s.run_pending()  # the connect: presence and hello
        yield s
    finally:
        bus.close(timeout=5)
        store.close()


def _acks_since(gm: FakeGM, mark: int) -> list[Envelope]:
    with gm.lock:
        return list(gm.rx.acks[mark:])


def _named(ack: Envelope) -> list[tuple[str, str, str]]:
    return [(a["name"], a["rv"], a.get("refused", "")) for a in (ack.body or {}).get("applied", [])]


def _job(name: str) -> dict[str, Any]:
    return job(name, NODE, "ds", Path("/nonexistent/out"), [])


def _poisoned(name: str) -> dict[str, Any]:
    """A job the models take but that cannot be stored: bytes (msgpack's bin) where the pod
    template is kept as given, which JSON cannot hold."""
    obj = _job(name)
    obj["spec"]["trainSpec"]["template"]["spec"]["containers"][0]["resources"] = {"x": b"\x00"}
    return obj


def test_a_burst_of_upserts_is_one_commit_and_one_ack(gm: FakeGM, session: Session) -> None:
    mark = len(gm.rx.acks)
    rvs = {f"job-{i}": gm.upsert(_job(f"job-{i}")) for i in range(BURST)}
    wait_for(lambda: session.queued() >= BURST, timeout=10, what="the burst to be handed off")
    commits = session.commits
    session.run_pending()
    assert session.commits == commits + 1
    wait_for(lambda: _acks_since(gm, mark), timeout=10, what="the burst's ack")
    acks = _acks_since(gm, mark)
    assert len(acks) == 1, [_named(a) for a in acks]
    assert sorted(_named(acks[0])) == sorted((n, rv, "") for n, rv in rvs.items())
    assert all(session.store.held_rv(JOB, NS, n) == rv for n, rv in rvs.items())


def test_an_item_that_cannot_be_stored_rolls_back_alone(gm: FakeGM, session: Session) -> None:
    mark = len(gm.rx.acks)
    good = {f"job-{i}": gm.upsert(_job(f"job-{i}")) for i in range(5)}
    gm.upsert(_poisoned("job-bad"))
    good |= {f"job-{i}": gm.upsert(_job(f"job-{i}")) for i in range(5, 10)}
    wait_for(lambda: session.queued() >= 11, timeout=10, what="the burst to be handed off")
    session.run_pending()
    wait_for(lambda: _acks_since(gm, mark), timeout=10, what="the burst's ack")
    acks = _acks_since(gm, mark)
    assert len(acks) == 1
    assert sorted(_named(acks[0])) == sorted((n, rv, "") for n, rv in good.items())  # not job-bad
    assert session.store.held_rv(JOB, NS, "job-bad") is None
    assert all(session.store.held_rv(JOB, NS, n) == rv for n, rv in good.items())
    assert session.downstream["failed"] == 1 and session.downstream["applied"] == 10


def test_sigkill_after_the_commit_before_the_ack_loses_and_repeats_nothing(
    broker: Broker, prefix: str, tmp_path: Path, gm: FakeGM
) -> None:
    lc = LCProcess(
        node=NODE, broker_url=broker.url, prefix=prefix, state_dir=tmp_path / "state", metrics=True
    )
    lc.start()
    try:
        lc.wait_started(gm, 0)
        # The GM stops listening: the burst's ack, sent after the commit, never reaches it.
        gm.client.unsubscribe(gm.topics.up_ctl(NODE))
        rvs = {f"job-{i}": gm.upsert(_job(f"job-{i}")) for i in range(BURST)}
        db = tmp_path / "state" / "lc.db"

        def held() -> dict[str, str]:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
                rows = conn.execute("SELECT name, rv FROM resources WHERE kind=?", (JOB,)).fetchall()
            return {str(n): str(rv) for n, rv in rows}

        wait_for(lambda: held() == rvs, timeout=20, what="the burst committed")
        lc.kill()  # after the commit; the ack it sent is lost, as if it had died first
        mark = len(gm.rx.acks)
        gm.client.subscribe(gm.topics.up_ctl(NODE), qos=1)
        hellos = gm.hello_count()
        lc.start()
        lc.wait_started(gm, hellos)
        with gm.lock:
            said = {r["name"]: r["rv"] for r in gm.rx.hellos[-1].body["resources"] if r["kind"] == JOB}
        assert said == rvs  # nothing lost: the hello names every committed version
        for name, rv in rvs.items():  # the GM, never acknowledged, sends them again
            gm.upsert(_job(name), rv=rv)
        # only acks received after the restart count: the unsubscribe above is asynchronous, so
        # the first LC's ack of the burst may still have reached the GM before it took effect
        wait_for(
            lambda: all(gm.acked(JOB, n, rv, since=mark) for n, rv in rvs.items()),
            timeout=20,
            what="every resent message acknowledged",
        )
        metrics = lc.metrics()
        assert f'lifelong_lc_downstream_total{{result="stale"}} {float(BURST)}' in metrics
        assert 'lifelong_lc_downstream_total{result="applied"} 0.0' in metrics
        assert held() == rvs  # each once, at its version
    finally:
        lc.kill()
