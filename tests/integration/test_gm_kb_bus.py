"""The unseen-sample loop between a real GM (in process, with a knowledge base) and an LC played
with plain MQTT messages (``harness.paho_lc``), on both brokers.

Covered: an ``UnseenSamples`` report is stored once and acknowledged, a resend stores nothing;
one from a node that takes no part in the job, or for a job that does not exist, is refused and
counted; while the knowledge base cannot be reached it is not acknowledged, and the LC's resend
is applied once it can; a label sends a ``LabelledSamples`` batch down to the Dataset's node,
whose report marks the samples delivered and gets the batch deleted; a GM restart between the
two keeps it going; ``status.knowledgeBase`` follows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.brokers import Broker
from harness.kb import SwitchableKB, make_kb
from harness.paho_lc import PahoLC, api, job_manifest, make_gm
from harness.waiting import wait_for

from lifelong.cloud.service import GMService
from lifelong.common.envelope import Envelope, Op

DATASET = {
    "apiVersion": "sedna.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "ds1"},
    "spec": {"url": "/data/ds.csv", "format": "csv", "nodeName": "node-a"},
}


def unseen(*ids: str) -> dict[str, Any]:
    return {"samples": [{"id": i, "row": {"x": 1, "label": None}, "predicted": "cat"} for i in ids]}


def kb_path(what: str) -> str:
    return f"/api/v1/namespaces/default/lifelonglearningjobs/job1/kb/{what}"


def status_count(gm: GMService, field: str) -> Any:
    """A sample count of job1's ``status.knowledgeBase`` as the GM API answers it."""
    status = api(gm, "GET", "/api/v1/LifelongLearningJob/default/job1").get("status") or {}
    return (status.get("knowledgeBase") or {}).get("samples", {}).get(field)


def counter(gm: GMService, metric: Any, **labels: str) -> float:
    return float(metric.labels(**labels)._value.get())


@pytest.fixture
def kb(tmp_path: Path) -> Iterator[SwitchableKB]:
    with make_kb(tmp_path / "kb") as base:
        yield SwitchableKB(base)


@pytest.fixture
def lcs(broker: Broker, prefix: str) -> Iterator[tuple[PahoLC, PahoLC, PahoLC]]:
    """node-a holds the Dataset, node-b runs the workers, node-c takes no part in the job."""
    nodes = [PahoLC(broker, prefix, n) for n in ("node-a", "node-b", "node-c")]
    yield nodes[0], nodes[1], nodes[2]
    for lc in nodes:
        lc.close()


def start(
    broker: Broker,
    prefix: str,
    tmp_path: Path,
    kb: SwitchableKB,
    lcs: tuple[PahoLC, ...],
    *,
    first: bool = True,
) -> GMService:
    """A GM with the knowledge base ``kb``, every LC's hello answered; ``first``: the Dataset
    and the job (its label column annotated) applied."""
    gm = make_gm(broker, prefix, tmp_path, kb=kb, kb_deliver_interval=0.3)
    for lc in lcs:
        before = len(lc.envelopes(Op.SYNC))
        lc.hello()
        wait_for(lambda lc=lc, before=before: len(lc.envelopes(Op.SYNC)) > before, what=f"{lc.node}'s sync")
    if first:
        job = job_manifest("node-b")
        job["metadata"]["annotations"] = {"lifelong.io/label-column": "label"}
        api(gm, "POST", "/api/v1/apply", DATASET)
        api(gm, "POST", "/api/v1/apply", job)
    return gm


def test_unseen_samples_are_stored_once_refused_from_strangers_and_wait_for_the_kb(
    broker: Broker, prefix: str, tmp_path: Path, kb: SwitchableKB, lcs: tuple[PahoLC, PahoLC, PahoLC]
) -> None:
    _, node_b, node_c = lcs
    gm = start(broker, prefix, tmp_path, kb, lcs)
    try:
        seq = node_b.report("UnseenSamples", "job1", unseen("s1", "s2"))
        wait_for(lambda: seq in node_b.acked_seqs(), what="the report acknowledged")
        assert [s.sample.id for s in kb.samples("default/job1")] == ["s1", "s2"]
        node_b.report("UnseenSamples", "job1", unseen("s1", "s2"), seq=seq)  # a resend
        again = node_b.report("UnseenSamples", "job1", unseen("s2"))  # a new report, an old sample
        wait_for(lambda: node_b.acked_seqs().count(seq) == 2 and again in node_b.acked_seqs(), what="acks")
        assert len(kb.samples("default/job1")) == 2
        assert counter(gm, gm.metrics.upstream_applied, kind="UnseenSamples") == 1
        # a node that takes no part in the job, a job that does not exist: refused, counted
        stranger = node_c.report("UnseenSamples", "job1", unseen("c1"))
        ghost = node_b.report("UnseenSamples", "nojob", unseen("g1"))
        wait_for(
            lambda: stranger in node_c.acked_seqs() and ghost in node_b.acked_seqs(), what="refusals acked"
        )
        assert counter(gm, gm.metrics.upstream_rejected, reason="wrong_node") == 1
        assert counter(gm, gm.metrics.upstream_rejected, reason="unknown_resource") == 1
        assert len(kb.samples("default/job1")) == 2 and kb.samples("default/nojob") == []
        # the KB cannot be reached: not acknowledged, nothing lost; the resend is applied later
        kb.available = False
        late = node_b.report("UnseenSamples", "job1", unseen("s3"))
        wait_for(
            lambda: counter(gm, gm.metrics.upstream_deferred, reason="kb_unavailable") == 1, what="deferred"
        )
        assert late not in node_b.acked_seqs()
        kb.available = True
        node_b.report("UnseenSamples", "job1", unseen("s3"), seq=late)
        wait_for(lambda: late in node_b.acked_seqs(), what="the resend acknowledged")
        assert [s.sample.id for s in kb.samples("default/job1")] == ["s1", "s2", "s3"]
        wait_for(lambda: status_count(gm, "numberOfUnseenSample") == 3, what="status.knowledgeBase following")
    finally:
        gm.stop()


def batch_upserts(lc: PahoLC) -> list[Envelope]:
    return lc.envelopes(Op.UPSERT, "LabelledSamples")


def test_a_label_reaches_the_datasets_node_across_a_gm_restart(
    broker: Broker, prefix: str, tmp_path: Path, kb: SwitchableKB, lcs: tuple[PahoLC, PahoLC, PahoLC]
) -> None:
    node_a, node_b, _ = lcs
    gm = start(broker, prefix, tmp_path, kb, lcs)
    try:
        seq = node_b.report("UnseenSamples", "job1", unseen("s1", "s2"))
        wait_for(lambda: seq in node_b.acked_seqs(), what="unseen samples stored")
        assert api(gm, "POST", kb_path("labels"), {"labels": {"s1": "dog"}}) == {"labelled": 1}
        upsert = wait_for(lambda: batch_upserts(node_a), what="the batch at the dataset's node")[-1]
        spec = upsert.body["object"]["spec"]
        assert (spec["job"], spec["dataset"], spec["labelColumn"]) == ("job1", "ds1", "label")
        assert [(s["id"], s["label"]) for s in spec["samples"]] == [("s1", "dog")]
        assert not batch_upserts(node_b)
    finally:
        gm.stop()
    # the GM restarts before the node reports the batch appended
    gm = start(broker, prefix, tmp_path, kb, lcs, first=False)
    try:
        name = upsert.name
        node_a.ack([upsert])
        node_a.report("LabelledSamples", name, {"appended": 1, "duplicates": 0})
        wait_for(
            lambda: [s.sample.id for s in kb.samples("default/job1", state="delivered")] == ["s1"],
            what="the samples marked delivered",
        )
        delete = wait_for(
            lambda: [e for e in node_a.envelopes(Op.DELETE, "LabelledSamples") if e.name == name],
            what="the batch deleted on the node",
        )
        node_a.ack(delete)
        wait_for(
            lambda: all(r.acked for r in gm.state.down_rows(key=("LabelledSamples", "default", name))),
            what="the delete acknowledged",
        )
        assert {e.name for e in batch_upserts(node_a)} == {name}  # never sent as another batch
        wait_for(
            lambda: status_count(gm, "numberOfLabeledUnseenSample") == 1,
            what="status.knowledgeBase counting the label",
        )
        summary = api(gm, "GET", kb_path("summary"))
        assert summary["samples"] == {"numberOfLabeledUnseenSample": 1, "numberOfUnseenSample": 2}
    finally:
        gm.stop()
