"""The GM's half of the unseen-sample loop, in process: the ``UnseenSamples`` and
``LabelledSamples`` controllers, the labelled samples' delivery, ``status.knowledgeBase`` and the
GM API's ``kb`` routes (a real HTTP server on a loopback port). The GM's bus is a recorder; the
LC's messages go through the real intake. The knowledge base is ``harness.kb.make_kb``'s.

tests/integration/test_gm_kb_bus.py runs the same loop on real brokers.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.kb import SwitchableKB, make_kb
from harness.waiting import wait_for

from lifelong.cloud.controllers.knowledgebase.labelled import batch_name, batches
from lifelong.cloud.service import GMService, GMSettings
from lifelong.common.codec import decode, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.kb import UnseenSample
from lifelong.common.topics import Topics

PREFIX = "kb/v1"
TOPICS = Topics(PREFIX)


class RecordingBus:
    """The GM's bus: keeps every envelope published (no broker)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: list[Envelope] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> object:
        with self.lock:
            self.sent.append(decode(payload))
        return object()

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass

    def down(self, node: str, op: Op, kind: str) -> list[Envelope]:
        with self.lock:
            return [e for e in self.sent if e.node == node and e.op is op and e.kind == kind]

    def acked(self, node: str) -> list[int]:
        with self.lock:
            acks = [e for e in self.sent if e.node == node and e.op is Op.ACK and e.kind == CONTROL_KIND]
        return [s for e in acks for s in (e.body or {}).get("seqs", [])]


def template(node: str) -> dict[str, Any]:
    return {"spec": {"nodeName": node, "containers": [{"name": "w", "image": "x", "command": ["true"]}]}}


def dataset(name: str = "ds1", node: str = "node-a") -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name, "namespace": "default", "annotations": {"lifelong.io/label-column": "y"}},
        "spec": {"url": "/data/ds.csv", "format": "csv", "nodeName": node},
    }


def job(name: str = "job1", ds: str = "ds1", node: str = "node-b") -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "LifelongLearningJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "dataset": {"name": ds, "trainProb": 0.8},
            "trainSpec": {
                "template": template(node),
                "trigger": {"condition": {"operator": ">", "threshold": 1.0, "metric": "num_of_samples"}},
            },
            "evalSpec": {"template": template(node)},
            "deploySpec": {"template": template(node)},
            "outputDir": "/out",
        },
    }


def samples(*ids: str, predicted: str = "cat") -> dict[str, Any]:
    return {
        "samples": [
            {
                "id": i,
                "row": {"x": 1.5, "y": None},
                "attrs": {"cam": "c1"},
                "predicted": predicted,
                "confidence": 0.4,
            }
            for i in ids
        ]
    }


class GM:
    """An in-process GM with a recording bus, the nodes ``node-a`` (the Dataset's), ``node-b``
    (the workers') and ``node-c`` (no part in the job) said hello."""

    def __init__(self, tmp_path: Path, kb: Any, bus: RecordingBus | None = None) -> None:
        self.bus = bus or RecordingBus()
        self.kb = kb
        self.svc = GMService(
            GMSettings(
                broker="mqtt://127.0.0.1:1",
                store=f"sqlite:{tmp_path / 'gm.db'}",
                api_port=0,
                prefix=PREFIX,
                kb_deliver_interval=0.2,
                resend_base=60.0,
            ),
            bus=self.bus,
            kb=kb,
        )
        self.svc.start_controllers()
        self.seq: dict[str, int] = {}
        for node in ("node-a", "node-b", "node-c"):
            hello = Envelope.new(
                node=node,
                kind=CONTROL_KIND,
                op=Op.HELLO,
                body={"agent": "t", "epoch": "e1", "boot": "b", "resources": [], "outbox": {}},
            )
            self.svc.intake.on_message(TOPICS.up_ctl(node), encode(hello))
        assert self.svc.executor.wait_idle(10)

    def report(self, node: str, kind: str, name: str, body: Any, seq: int | None = None) -> int:
        if seq is None:
            seq = self.seq[node] = self.seq.get(node, 0) + 1
        env = Envelope.new(node=node, kind=kind, ns="default", name=name, op=Op.REPORT, seq=seq, body=body)
        self.svc.intake.on_message(TOPICS.up(node, kind, "default", name), encode(env))
        assert self.svc.executor.wait_idle(10)
        return seq

    def http(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.svc.api_port}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def apply(self, obj: dict[str, Any]) -> None:
        status, answer = self.http("POST", "/api/v1/apply", obj)
        assert status == 200, answer

    def kb_path(self, what: str, name: str = "job1") -> str:
        return f"/api/v1/namespaces/default/lifelonglearningjobs/{name}/kb/{what}"

    def job_status(self, name: str = "job1") -> dict[str, Any]:
        obj = self.svc.store.get("LifelongLearningJob", "default", name)
        assert obj is not None
        return dict(obj.get("status") or {})

    def counter(self, metric: Any, **labels: str) -> float:
        return float(metric.labels(**labels)._value.get())

    def stop(self) -> None:
        self.svc.stop()


@pytest.fixture
def kb(tmp_path: Path) -> Iterator[SwitchableKB]:
    with make_kb(tmp_path / "kb") as base:
        yield SwitchableKB(base)


@pytest.fixture
def gm(tmp_path: Path, kb: SwitchableKB) -> Iterator[GM]:
    g = GM(tmp_path, kb)
    g.apply(dataset())
    g.apply(job())
    yield g
    g.stop()


def stored(kb: Any, job_name: str = "default/job1", state: str = "all") -> list[Any]:
    return list(kb.samples(job_name, state=state))


# -- unseen samples in ---------------------------------------------------------------------------


def test_unseen_samples_are_stored_once_and_acknowledged(gm: GM, kb: SwitchableKB) -> None:
    seq = gm.report("node-b", "UnseenSamples", "job1", samples("s1", "s2"))
    assert seq in gm.bus.acked("node-b")
    assert [s.sample.id for s in stored(kb)] == ["s1", "s2"]
    assert {s.node for s in stored(kb)} == {"node-b"}
    gm.report("node-b", "UnseenSamples", "job1", samples("s1", "s2"), seq=seq)  # the same report again
    assert gm.bus.acked("node-b").count(seq) == 2
    assert kb.calls["add_unseen"] == 1  # a resent report is not applied again
    again = gm.report("node-b", "UnseenSamples", "job1", samples("s2"))  # a new report, an old sample
    assert again in gm.bus.acked("node-b")
    assert len(stored(kb)) == 2
    m = gm.svc.metrics
    assert gm.counter(m.upstream_applied, kind="UnseenSamples") == 1
    assert gm.counter(m.upstream_duplicate, kind="UnseenSamples") == 2
    # the job's status follows the KB
    wait_for(
        lambda: gm.job_status().get("knowledgeBase", {}).get("samples", {}).get("numberOfUnseenSample") == 2,
        what="status.knowledgeBase counting the unseen samples",
    )


def test_the_datasets_node_may_report_unseen_samples_too(gm: GM, kb: SwitchableKB) -> None:
    seq = gm.report("node-a", "UnseenSamples", "job1", samples("a1"))
    assert seq in gm.bus.acked("node-a")
    assert [s.node for s in stored(kb)] == ["node-a"]


def test_unseen_samples_of_an_unknown_job_or_from_another_node_are_refused_and_counted(
    gm: GM, kb: SwitchableKB, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = gm.report("node-c", "UnseenSamples", "job1", samples("s1"))
    unknown = gm.report("node-b", "UnseenSamples", "nojob", samples("s2"))
    invalid = gm.report("node-b", "UnseenSamples", "job1", {"samples": [{"id": "../x", "row": {}}]})
    assert wrong in gm.bus.acked("node-c")  # refused for good: acknowledged, never applied
    assert {unknown, invalid} <= set(gm.bus.acked("node-b"))
    assert stored(kb) == [] and stored(kb, "default/nojob") == []
    m = gm.svc.metrics
    assert gm.counter(m.upstream_rejected, reason="wrong_node") == 1
    assert gm.counter(m.upstream_rejected, reason="unknown_resource") == 1
    assert gm.counter(m.upstream_rejected, reason="invalid") == 1
    assert "node node-c takes no part in job default/job1" in caplog.text
    assert "samples[0].id" in caplog.text  # the refusal names the field


def test_unseen_samples_wait_unacknowledged_while_the_kb_cannot_be_reached(gm: GM, kb: SwitchableKB) -> None:
    kb.available = False
    seq = gm.report("node-b", "UnseenSamples", "job1", samples("s1"))
    assert seq not in gm.bus.acked("node-b")
    assert gm.counter(gm.svc.metrics.upstream_deferred, reason="kb_unavailable") == 1
    kb.available = True
    assert stored(kb) == []
    gm.report("node-b", "UnseenSamples", "job1", samples("s1"), seq=seq)  # the LC resends it
    assert seq in gm.bus.acked("node-b")
    assert [s.sample.id for s in stored(kb)] == ["s1"]


def test_without_a_kb_unseen_samples_wait_and_the_api_says_why(tmp_path: Path) -> None:
    g = GM(tmp_path, None)
    try:
        g.apply(dataset())
        g.apply(job())
        seq = g.report("node-b", "UnseenSamples", "job1", samples("s1"))
        assert seq not in g.bus.acked("node-b")
        assert g.counter(g.svc.metrics.upstream_deferred, reason="kb_off") == 1
        status, answer = g.http("GET", g.kb_path("samples"))
        assert status == 503 and "no knowledge base" in answer["error"]
        status, answer = g.http("POST", g.kb_path("labels"), {"labels": {"s1": "dog"}})
        assert status == 503
        status, _ = g.http("GET", g.kb_path("summary", "nojob"))
        assert status == 404  # an unknown job is unknown, KB or not
    finally:
        g.stop()


# -- labelled samples out ------------------------------------------------------------------------


def batches_to(gm: GM, node: str) -> list[Envelope]:
    return gm.bus.down(node, Op.UPSERT, "LabelledSamples")


def test_a_label_sends_a_batch_to_the_datasets_node_and_its_report_marks_it_delivered(
    gm: GM, kb: SwitchableKB
) -> None:
    gm.report("node-b", "UnseenSamples", "job1", samples("s1", "s2", "s3"))
    status, answer = gm.http("POST", gm.kb_path("labels"), {"labels": {"s1": "dog", "s3": 7}})
    assert (status, answer) == (200, {"labelled": 2})
    upsert = wait_for(lambda: batches_to(gm, "node-a"), what="the batch sent to the dataset's node")[0]
    obj = upsert.body["object"]
    assert obj["apiVersion"] == "lifelong.io/v1" and obj["kind"] == "LabelledSamples"
    assert obj["metadata"]["name"] == batch_name("ds1", ["s1", "s3"]) and obj["metadata"]["name"].startswith(
        "ds1-"
    )
    spec = obj["spec"]
    assert (spec["job"], spec["dataset"], spec["labelColumn"]) == ("job1", "ds1", "y")
    assert [(s["id"], s["label"], s["row"]) for s in spec["samples"]] == [
        ("s1", "dog", {"x": 1.5, "y": None}),
        ("s3", 7, {"x": 1.5, "y": None}),
    ]
    assert not batches_to(gm, "node-b") and not batches_to(gm, "node-c")
    # passes go on: the batch in flight is not sent again as another one
    passes = gm.svc.labelled.passes if gm.svc.labelled else 0
    wait_for(lambda: gm.svc.labelled is not None and gm.svc.labelled.passes >= passes + 2, what="two passes")
    assert {e.name for e in batches_to(gm, "node-a")} == {obj["metadata"]["name"]}
    # a node that is not the batch's cannot report it
    gm.report("node-b", "LabelledSamples", obj["metadata"]["name"], {"appended": 2})
    assert gm.counter(gm.svc.metrics.upstream_rejected, reason="wrong_node") == 1
    assert [s.sample.id for s in stored(kb, state="delivered")] == []
    seq = gm.report("node-a", "LabelledSamples", obj["metadata"]["name"], {"appended": 2, "duplicates": 0})
    assert seq in gm.bus.acked("node-a")
    assert [s.sample.id for s in stored(kb, state="delivered")] == ["s1", "s3"]
    delete = gm.bus.down("node-a", Op.DELETE, "LabelledSamples")
    assert [e.name for e in delete] == [obj["metadata"]["name"]]
    assert int(delete[0].rv or 0) > int(upsert.rv or 0)  # newer than the upsert: the LC applies it
    assert gm.counter(gm.svc.metrics.kb_batches, event="delivered") == 1
    # a report of the removed batch again (another seq) is a duplicate
    gm.report("node-a", "LabelledSamples", obj["metadata"]["name"], {"appended": 0, "duplicates": 2})
    assert gm.counter(gm.svc.metrics.upstream_duplicate, kind="LabelledSamples") == 1
    wait_for(
        lambda: (
            gm.job_status().get("knowledgeBase", {}).get("samples", {}).get("numberOfLabeledUnseenSample")
            == 2
        ),
        what="status.knowledgeBase counting the labels",
    )


def test_labels_given_while_a_batch_is_on_its_way_go_in_a_batch_of_their_own(gm: GM) -> None:
    gm.report("node-b", "UnseenSamples", "job1", samples("s1", "s2"))
    gm.http("POST", gm.kb_path("labels"), {"labels": {"s1": "a"}})
    wait_for(lambda: batches_to(gm, "node-a"), what="the first batch")
    gm.http("POST", gm.kb_path("labels"), {"labels": {"s2": "b"}})
    wait_for(lambda: len({e.name for e in batches_to(gm, "node-a")}) == 2, what="the second batch")
    by_name = {
        e.name: [s["id"] for s in e.body["object"]["spec"]["samples"]] for e in batches_to(gm, "node-a")
    }
    assert sorted(by_name.values()) == [["s1"], ["s2"]]  # s1, on its way, is not sent again


def test_a_report_of_a_batch_never_sent_is_refused(gm: GM) -> None:
    gm.report("node-a", "LabelledSamples", "ds1-000000000000", {"appended": 1})
    assert gm.counter(gm.svc.metrics.upstream_rejected, reason="unknown_resource") == 1


def test_the_delivered_mark_waits_for_the_kb(gm: GM, kb: SwitchableKB) -> None:
    gm.report("node-b", "UnseenSamples", "job1", samples("s1"))
    gm.http("POST", gm.kb_path("labels"), {"labels": {"s1": "dog"}})
    name = wait_for(lambda: batches_to(gm, "node-a"), what="the batch")[0].name
    kb.available = False
    seq = gm.report("node-a", "LabelledSamples", name, {"appended": 1})
    assert seq not in gm.bus.acked("node-a")
    assert not gm.bus.down("node-a", Op.DELETE, "LabelledSamples")  # the batch stays until marked
    kb.available = True
    gm.report("node-a", "LabelledSamples", name, {"appended": 0, "duplicates": 1}, seq=seq)
    assert seq in gm.bus.acked("node-a")
    assert [s.sample.id for s in stored(kb, state="delivered")] == ["s1"]


def test_labelling_all_of_one_predicted_class(gm: GM, kb: SwitchableKB) -> None:
    gm.report("node-b", "UnseenSamples", "job1", samples("c1", "c2", predicted="cat"))
    gm.report("node-b", "UnseenSamples", "job1", samples("d1", predicted="dog"))
    status, answer = gm.http("POST", gm.kb_path("labels"), {"predicted": "cat", "label": "lynx"})
    assert (status, answer) == (200, {"labelled": 2})
    assert [(s.sample.id, s.label) for s in stored(kb, state="labelled")] == [("c1", "lynx"), ("c2", "lynx")]


def test_one_job_whose_dataset_is_gone_does_not_stop_the_others(gm: GM, kb: SwitchableKB) -> None:
    gm.apply(dataset("ds2"))
    gm.apply(job("job2", "ds2"))
    gm.report("node-b", "UnseenSamples", "job2", samples("t1"))
    gm.report("node-b", "UnseenSamples", "job1", samples("s1"))
    assert gm.http("DELETE", "/api/v1/Dataset/default/ds2")[0] == 200
    gm.http("POST", gm.kb_path("labels", "job2"), {"labels": {"t1": "a"}})  # labelled first
    gm.http("POST", gm.kb_path("labels"), {"labels": {"s1": "b"}})
    sent = wait_for(lambda: batches_to(gm, "node-a"), what="job1's batch")
    assert [e.body["object"]["spec"]["job"] for e in sent] == ["job1"]
    wait_for(
        lambda: gm.counter(gm.svc.metrics.kb_undeliverable, reason="dataset_missing") >= 1,
        what="job2's samples counted as waiting",
    )
    assert [s.sample.id for s in stored(kb, "default/job2", state="labelled")] == ["t1"]  # kept


def test_batches_in_flight_survive_a_gm_restart(tmp_path: Path, kb: SwitchableKB) -> None:
    g = GM(tmp_path, kb)
    try:
        g.apply(dataset())
        g.apply(job())
        g.report("node-b", "UnseenSamples", "job1", samples("s1", "s2"))
        g.http("POST", g.kb_path("labels"), {"labels": {"s1": "x"}})
        name = wait_for(lambda: batches_to(g, "node-a"), what="the batch")[0].name
    finally:
        g.stop()
    g = GM(tmp_path, kb)  # the same databases and KB
    try:
        assert g.svc.labelled is not None
        passes = g.svc.labelled.passes
        wait_for(lambda: g.svc.labelled is not None and g.svc.labelled.passes >= passes + 2, what="passes")
        # the node's hello (with nothing held) got the batch again, under the same name only
        assert {e.name for e in batches_to(g, "node-a")} == {name}
        g.report("node-a", "LabelledSamples", name, {"appended": 1})
        assert [s.sample.id for s in stored(kb, state="delivered")] == ["s1"]
        g.http("POST", g.kb_path("labels"), {"labels": {"s2": "y"}})
        wait_for(lambda: len({e.name for e in batches_to(g, "node-a")}) == 2, what="the next batch")
    finally:
        g.stop()


# -- status.knowledgeBase ------------------------------------------------------------------------


def test_a_completed_train_stage_refreshes_the_knowledge_base_status(gm: GM, kb: SwitchableKB) -> None:
    gm.report("node-b", "UnseenSamples", "job1", samples("s1"))
    wait_for(lambda: "knowledgeBase" in gm.job_status(), what="a first status")
    # the KB learns of more without the GM (as a worker's index post would change it)
    kb.inner.add_unseen("default/job1", "node-b", [UnseenSample(id="s9", row={"x": 1})])
    ready = {"event": "ready", "stage": "Train", "round": 1, "data": {}}
    gm.report("node-b", "LifelongLearningJob", "job1", ready)
    worker = wait_for(lambda: gm.bus.down("node-b", Op.UPSERT, "Worker"), what="the train worker")[0].name
    assert gm.job_status()["knowledgeBase"]["samples"]["numberOfUnseenSample"] == 1
    body = {"job": "job1", "stage": "Train", "round": 1, "phase": "Succeeded", "exitCode": 0, "output": {}}
    gm.report("node-b", "Worker", worker, body)
    wait_for(
        lambda: gm.job_status()["knowledgeBase"]["samples"]["numberOfUnseenSample"] == 2,
        what="the status refreshed after Train completed",
    )


def test_describe_shows_the_knowledge_base(gm: GM, capsys: pytest.CaptureFixture[str]) -> None:
    from lifelong.__main__ import main

    gm.report("node-b", "UnseenSamples", "job1", samples("s1", "s2"))
    gm.http("POST", gm.kb_path("labels"), {"labels": {"s1": "dog"}})
    wait_for(
        lambda: (
            gm.job_status().get("knowledgeBase", {}).get("samples", {}).get("numberOfLabeledUnseenSample")
            == 1
        ),
        what="the status",
    )
    assert main(["describe", "ll", "job1", "--server", f"http://127.0.0.1:{gm.svc.api_port}"]) == 0
    out = capsys.readouterr().out
    assert "Knowledge Base:" in out
    assert "Unseen Samples:  2 (1 labelled)" in out


# -- the API's errors ----------------------------------------------------------------------------


def test_the_kb_routes_name_what_is_wrong(gm: GM, kb: SwitchableKB) -> None:
    gm.report("node-b", "UnseenSamples", "job1", samples("s1"))
    cases = [
        ("GET", gm.kb_path("samples", "nojob"), None, 404, "not found"),
        ("GET", gm.kb_path("samples") + "?state=new", None, 400, "state"),
        ("GET", gm.kb_path("samples") + "?limit=0", None, 400, "limit"),
        ("GET", gm.kb_path("samples") + "?limit=x", None, 400, "limit"),
        ("POST", gm.kb_path("labels"), {"labels": {"s1": 1.5}}, 400, "labels.s1"),
        ("POST", gm.kb_path("labels"), {"labels": {"bad id": "x"}}, 400, "labels"),
        ("POST", gm.kb_path("labels"), {"labels": {}}, 400, "labels"),
        ("POST", gm.kb_path("labels"), {"predicted": "cat"}, 400, "label"),
        ("POST", gm.kb_path("labels"), ["s1"], 400, "must be a mapping"),
        ("POST", gm.kb_path("labels"), {"labels": {"s1": "a", "nope": "b"}}, 400, "nope"),
        ("GET", gm.kb_path("index"), None, 404, "kb/index"),
    ]
    for method, path, body, code, words in cases:
        status, answer = gm.http(method, path, body)
        assert (status, words in answer["error"]) == (code, True), (method, path, body, answer)
    assert stored(kb, state="labelled") == []  # the refused labels changed nothing
    kb.available = False
    status, answer = gm.http("GET", gm.kb_path("summary"))
    assert status == 503 and "cannot be reached" in answer["error"]


def test_samples_are_listed_in_pages_and_filtered(gm: GM) -> None:
    gm.report("node-b", "UnseenSamples", "job1", samples("s1", "s2", "s3", predicted="3"))
    gm.report("node-b", "UnseenSamples", "job1", samples("s4"))
    status, page = gm.http("GET", gm.kb_path("samples") + "?limit=2")
    assert status == 200 and [s["id"] for s in page["items"]] == ["s1", "s2"] and page["next"] == "s2"
    _, page = gm.http("GET", gm.kb_path("samples") + "?limit=2&after=s2")
    assert [s["id"] for s in page["items"]] == ["s3", "s4"]
    _, page = gm.http("GET", gm.kb_path("samples") + '?predicted="3"')
    assert [s["id"] for s in page["items"]] == ["s1", "s2", "s3"] and page["next"] is None
    first = page["items"][0]
    assert first["state"] == "unlabelled" and first["node"] == "node-b" and first["attrs"] == {"cam": "c1"}
    _, page = gm.http("GET", gm.kb_path("samples") + "?predicted=3")  # the number 3: none
    assert page["items"] == []


# -- pure parts ----------------------------------------------------------------------------------


def test_batch_names_are_valid_deterministic_and_bounded() -> None:
    from lifelong.common.api.meta import is_dns1123_subdomain

    long = ("a" * 60 + ".") * 4 + "b" * 9  # 253 characters
    assert len(long) == 253
    name = batch_name(long, ["s1", "s2"])
    assert len(name) <= 253 and is_dns1123_subdomain(name)
    assert name == batch_name(long, ["s1", "s2"]) != batch_name(long, ["s1", "s3"])
    assert batch_name("ds1", ["x"]).startswith("ds1-") and len(batch_name("ds1", ["x"])) == 16


def test_batches_are_bounded_by_count_and_bytes() -> None:
    items = [{"id": f"s{i}", "row": {"v": "x" * 100}, "label": 1} for i in range(1200)]
    by_count = batches(items, 10**9)
    assert [len(b) for b in by_count] == [500, 500, 200]
    by_bytes = batches(items, 1500)
    assert all(len(json.dumps(b)) <= 1600 for b in by_bytes) and sum(len(b) for b in by_bytes) == 1200
    assert [i["id"] for b in by_bytes for i in b] == [i["id"] for i in items]
