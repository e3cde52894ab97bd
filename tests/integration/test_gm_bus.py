"""The real GM (in-process ``GMService``) on real brokers, with the LC played by the test.

The LC side is plain paho-mqtt plus the codec and speaks only docs/protocol.md: hello, reports,
acks of downstream messages. Covered: hello -> upserts + sync; unacknowledged changes resent
until acked; reports acked only once applied; bad envelopes (node != topic node, garbage,
oversize) counted while the GM keeps working; retained GM presence and its will. The
``clustered`` ones also run on the two-node RabbitMQ cluster, the GM on one node and the LC on
the other (the retained-presence and broker-restart tests need one broker: see
tests/integration/test_rabbitmq_cluster.py for what a cluster does with retained messages).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.brokers import Broker
from harness.paho_lc import PahoLC, api, job_manifest, make_gm
from harness.waiting import wait_for

from lifelong.cloud.service import GMService
from lifelong.common.codec import encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op


@pytest.fixture
def gm(broker: Broker, prefix: str, tmp_path: Path) -> Iterator[GMService]:
    g = make_gm(broker, prefix, tmp_path)
    yield g
    g.stop()


@pytest.fixture
def lc(broker: Broker, prefix: str) -> Iterator[PahoLC]:
    client = PahoLC(broker, prefix, "node-a")
    yield client
    client.close()


DATASET = {
    "apiVersion": "sedna.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "ds1"},
    "spec": {"url": "/data/ds.txt", "format": "txt", "nodeName": "node-a"},
}


def test_gm_presence_is_retained_online_and_offline_after_a_clean_stop(
    broker: Broker, prefix: str, tmp_path: Path, lc: PahoLC
) -> None:
    gm = make_gm(broker, prefix, tmp_path)
    try:
        wait_for(
            lambda: lc.gm_presence and lc.gm_presence[-1] == "online", what="retained GM presence online"
        )
    finally:
        gm.stop()
    wait_for(lambda: lc.gm_presence[-1] == "offline", what="GM presence offline")
    late = PahoLC(broker, prefix, "node-late")  # retained: a later subscriber sees it too
    try:
        wait_for(lambda: late.gm_presence == ["offline"], what="retained offline for a late subscriber")
    finally:
        late.close()


@pytest.mark.clustered
def test_gm_will_says_offline_when_its_connection_dies(
    broker: Broker, prefix: str, tmp_path: Path, lc: PahoLC
) -> None:
    gm = make_gm(broker, prefix, tmp_path)
    try:
        wait_for(lambda: lc.gm_presence and lc.gm_presence[-1] == "online", what="GM presence online")
        gm.bus.kill()  # no DISCONNECT: the broker publishes the will
        wait_for(lambda: lc.gm_presence[-1] == "offline", what="the will's offline")
    finally:
        gm.stop()


@pytest.mark.clustered
def test_hello_gets_upserts_and_a_sync(gm: GMService, lc: PahoLC) -> None:
    lc.hello()
    wait_for(lambda: lc.envelopes(Op.SYNC), what="the first sync")
    assert api(gm, "POST", "/api/v1/apply", DATASET)["result"] == "created"
    assert api(gm, "POST", "/api/v1/apply", job_manifest())["result"] == "created"
    wait_for(lambda: lc.envelopes(Op.UPSERT, "LifelongLearningJob"), what="the job upsert")
    # a reconnect that holds nothing gets everything again, then a sync naming it all
    before = len(lc.envelopes())
    lc.hello(resources=[])
    wait_for(lambda: len(lc.envelopes(Op.SYNC)) >= 2, what="the second sync")
    after = lc.envelopes()[before:]
    kinds = {(e.op, e.kind) for e in after}
    assert (Op.UPSERT, "LifelongLearningJob") in kinds and (Op.UPSERT, "Dataset") in kinds
    sync = lc.envelopes(Op.SYNC)[-1].body["resources"]
    assert {r["name"] for r in sync} == {"ds1", "job1"}
    assert api(gm, "GET", "/healthz") == b"ok\n"


@pytest.mark.clustered
def test_unacked_changes_are_resent_until_acked(gm: GMService, lc: PahoLC) -> None:
    lc.hello()
    wait_for(lambda: lc.envelopes(Op.SYNC), what="the first sync")
    api(gm, "POST", "/api/v1/apply", DATASET)
    wait_for(lambda: len(lc.envelopes(Op.UPSERT, "Dataset")) >= 3, timeout=15, what="resends of the dataset")
    lc.ack(lc.envelopes(Op.UPSERT, "Dataset")[-1:])
    wait_for(lambda: gm.state.unacked_counts().get("node-a", 0) == 0, what="the ack recorded")
    count = len(lc.envelopes(Op.UPSERT, "Dataset"))
    # the resend ticker runs every 0.1 s: give it a few rounds (a deadline, not a sleep)
    assert not _true_within(lambda: len(lc.envelopes(Op.UPSERT, "Dataset")) > count, 1.5)
    nodes = api(gm, "GET", "/api/v1/nodes")["items"]
    assert nodes[0]["node"] == "node-a" and nodes[0]["online"] and nodes[0]["unacked"] == 0
    assert nodes[0]["outbox"] == {"depth": 0, "lowSeq": None, "nextSeq": 1}  # as the hello said


def _true_within(predicate: Any, seconds: float) -> bool:
    from harness.waiting import DeadlineExceeded

    try:
        wait_for(predicate, timeout=seconds)
    except DeadlineExceeded:
        return False
    return True


@pytest.mark.clustered
def test_reports_are_applied_once_and_acked(gm: GMService, lc: PahoLC) -> None:
    lc.hello()
    wait_for(lambda: lc.envelopes(Op.SYNC), what="the first sync")
    api(gm, "POST", "/api/v1/apply", DATASET)
    body = {"numberOfSamples": 12, "updateTime": "2026-05-01T00:00:00Z"}
    seq = lc.report("Dataset", "ds1", body)
    lc.report("Dataset", "ds1", body, seq=seq)
    wait_for(lambda: lc.acked_seqs().count(seq) == 2, what="both copies acked")
    ds = api(gm, "GET", "/api/v1/Dataset/default/ds1")
    assert ds["status"]["numberOfSamples"] == 12
    metrics = api(gm, "GET", "/metrics")
    assert b'lifelong_gm_upstream_applied_total{kind="Dataset"} 1.0' in metrics
    assert b'lifelong_gm_upstream_duplicate_total{kind="Dataset"} 1.0' in metrics


@pytest.mark.clustered
def test_bad_envelopes_are_counted_and_the_gm_survives(gm: GMService, lc: PahoLC) -> None:
    lc.hello()
    wait_for(lambda: lc.envelopes(Op.SYNC), what="the first sync")
    api(gm, "POST", "/api/v1/apply", DATASET)
    topic = lc.topics.up("node-a", "Dataset", "default", "ds1")
    spoof = Envelope.new(node="node-b", kind="Dataset", ns="default", name="ds1", op=Op.REPORT, seq=50,
                         body={"numberOfSamples": 999, "updateTime": "2026-05-01T00:00:00Z"})  # fmt: skip
    lc.send(topic, encode(spoof))
    lc.send(topic, b"\x00\x01not an envelope")
    lc.send(topic, b"{" + b" " * (300 * 1024) + b"}")

    def rejected(reason: str) -> float:
        return gm.metrics.upstream_rejected.labels(reason=reason)._value.get()

    wait_for(
        lambda: rejected("identity") == 1 and rejected("decode") == 1 and rejected("too_large") == 1,
        what="three rejections counted",
    )
    seq = lc.report("Dataset", "ds1", {"numberOfSamples": 3, "updateTime": "2026-05-01T00:00:00Z"})
    wait_for(lambda: seq in lc.acked_seqs(), what="a good report applied after the bad ones")
    assert api(gm, "GET", "/api/v1/Dataset/default/ds1")["status"]["numberOfSamples"] == 3


@pytest.mark.clustered
def test_unacked_report_is_applied_after_a_gm_restart(
    broker: Broker, prefix: str, tmp_path: Path, lc: PahoLC
) -> None:
    gm = make_gm(broker, prefix, tmp_path)
    try:
        lc.hello()
        wait_for(lambda: lc.envelopes(Op.SYNC), what="the first sync")
        api(gm, "POST", "/api/v1/apply", DATASET)
        api(gm, "POST", "/api/v1/apply", job_manifest())
        ready = {"event": "ready", "stage": "Train", "round": 1, "data": {}}
        seq = lc.report("LifelongLearningJob", "job1", ready)
        wait_for(lambda: seq in lc.acked_seqs(), what="ready acked")
    finally:
        gm.stop()
    gm = make_gm(broker, prefix, tmp_path)
    try:
        lc.report("LifelongLearningJob", "job1", ready, seq=seq)  # as if the ack had been lost
        wait_for(lambda: lc.acked_seqs().count(seq) == 2, what="the resend acked by the new GM")
        wait_for(lambda: lc.envelopes(Op.UPSERT, "Worker"), what="the train worker sent down")
        job = api(gm, "GET", "/api/v1/LifelongLearningJob/default/job1")
        types = [(c["stage"], c["type"]) for c in job["status"]["conditions"]]
        assert types.count(("Train", "Ready")) == 1
    finally:
        gm.stop()


def test_a_broker_restart_without_persistence_converges(gm: GMService, lc: PahoLC, broker: Broker) -> None:
    lc.hello()
    wait_for(lambda: lc.envelopes(Op.SYNC), what="the first sync")
    api(gm, "POST", "/api/v1/apply", DATASET)
    wait_for(lambda: lc.envelopes(Op.UPSERT, "Dataset"), what="the dataset sent")
    lc.ack(lc.envelopes(Op.UPSERT, "Dataset")[-1:])
    wait_for(lambda: gm.state.unacked_counts().get("node-a", 0) == 0, what="acked")
    broker.stop()  # forgets every retained message and session
    wait_for(lambda: not gm.bus.connected, what="the GM seeing the broker gone")
    assert api(gm, "POST", "/api/v1/apply", job_manifest())["result"] == "created"  # the GM keeps working
    lc.subscribed.clear()
    broker.start()
    assert gm.bus.wait_connected(20)
    assert lc.subscribed.wait(20)
    wait_for(lambda: lc.gm_presence and lc.gm_presence[-1] == "online", what="GM presence published again")
    before = len(lc.envelopes())
    lc.hello(resources=[])  # as an LC that lost its state would
    wait_for(lambda: any(e.op is Op.SYNC for e in lc.envelopes()[before:]), what="the sync after the restart")
    after = {(e.op, e.kind) for e in lc.envelopes()[before:]}
    assert {(Op.UPSERT, "Dataset"), (Op.UPSERT, "LifelongLearningJob")} <= after


@pytest.mark.clustered
def test_an_object_the_lc_refuses_is_acked_counted_and_not_resent(gm: GMService, lc: PahoLC) -> None:
    lc.hello()
    wait_for(lambda: lc.envelopes(Op.SYNC), what="the first sync")
    api(gm, "POST", "/api/v1/apply", DATASET)
    wait_for(lambda: lc.envelopes(Op.UPSERT, "Dataset"), what="the dataset sent")
    upsert = lc.envelopes(Op.UPSERT, "Dataset")[-1]
    why = "upsert body: object.spec.url: Input should be a valid string"
    applied = [
        {"kind": "Dataset", "ns": "default", "name": "ds1", "rv": upsert.rv, "op": "upsert", "refused": why}
    ]
    env = Envelope.new(node=lc.node, kind=CONTROL_KIND, op=Op.ACK, body={"applied": applied})
    lc.send(lc.topics.up_ctl(lc.node), encode(env))
    wait_for(lambda: gm.state.unacked_counts().get("node-a", 0) == 0, what="the refusal taken as an ack")
    assert b'lifelong_gm_downstream_refused_total{kind="Dataset"} 1.0' in api(gm, "GET", "/metrics")
    count = len(lc.envelopes(Op.UPSERT, "Dataset"))
    # the resend ticker runs every 0.1 s: give it a few rounds (a deadline, not a sleep)
    assert not _true_within(lambda: len(lc.envelopes(Op.UPSERT, "Dataset")) > count, 1.5)


@pytest.mark.clustered
def test_a_report_the_models_refuse_is_acked_and_counted_and_a_good_one_still_applies(
    gm: GMService, lc: PahoLC
) -> None:
    lc.hello()
    wait_for(lambda: lc.envelopes(Op.SYNC), what="the first sync")
    api(gm, "POST", "/api/v1/apply", DATASET)
    bad = lc.report("Dataset", "ds1", {"numberOfSamples": "12", "updateTime": "2026-05-01T00:00:00Z"})
    good = lc.report("Dataset", "ds1", {"numberOfSamples": 7, "updateTime": "2026-05-01T00:00:00Z"})
    wait_for(lambda: {bad, good} <= set(lc.acked_seqs()), what="both acked (the bad one is never resent)")
    assert gm.metrics.upstream_rejected.labels(reason="invalid")._value.get() == 1
    assert api(gm, "GET", "/api/v1/Dataset/default/ds1")["status"]["numberOfSamples"] == 7
