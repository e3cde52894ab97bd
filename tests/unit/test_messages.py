"""The protocol body models (``lifelong.common.messages``) and the ``Worker`` object model: each
body parses when good, names the field when a type is wrong, ignores a field it does not know,
and serialises to exactly the map peers send today (docs/protocol.md)."""

from __future__ import annotations

from typing import Any

import pytest

from lifelong.common.api import Dataset, LifelongLearningJob, Worker, dump_resource
from lifelong.common.errors import InvalidBody, ProtocolError
from lifelong.common.messages import (
    Applied,
    AppliedAck,
    Body,
    DatasetReport,
    Hello,
    JobReady,
    JobSkipped,
    JobWorkerInfo,
    Presence,
    SeqAck,
    Sync,
    Upsert,
    WorkerInfoPost,
    WorkerReport,
    parse_job_report,
    parse_object,
)

TEMPLATE = {"spec": {"nodeName": "edge-1", "containers": [{"image": "x", "command": ["python", "t.py"]}]}}
WORKER = {
    "apiVersion": "lifelong.io/v1",
    "kind": "Worker",
    "metadata": {
        "name": "job1-train-1",
        "namespace": "default",
        "resourceVersion": "7",
        "uid": "u-1",
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "generation": 1,
        "labels": {"lifelong.io/job": "job1", "lifelong.io/stage": "Train", "lifelong.io/round": "1"},
    },
    "spec": {"job": "job1", "stage": "Train", "round": 1, "template": TEMPLATE, "env": {"MODEL_URL": "/m"}},
}
DATASET = {
    "apiVersion": "sedna.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "ds1", "namespace": "default", "resourceVersion": "3"},
    "spec": {"url": "/data/ds1.csv", "format": "csv", "nodeName": "edge-1"},
}

# (model, a body as peers send it today, a field path, a wrong value for that field)
CASES: list[tuple[type[Body], dict[str, Any], str, Any]] = [
    (Presence, {"state": "online", "agent": "lifelong-gm/0.1.0"}, "state", "up"),
    (
        Hello,
        {
            "agent": "lifelong-lc/0.1.0",
            "epoch": "ep1",
            "boot": "b1",
            "resources": [{"kind": "Dataset", "ns": "default", "name": "ds1", "rv": "3"}],
            "outbox": {"depth": 0, "lowSeq": None, "nextSeq": 1},
        },
        "outbox.lowSeq",
        "1",
    ),
    (Sync, {"resources": [{"kind": "Dataset", "ns": "default", "name": "ds1", "rv": "3"}]}, "resources", {}),
    (SeqAck, {"epoch": "ep1", "seqs": [1, 2, 3]}, "epoch", 7),
    (
        AppliedAck,
        {
            "applied": [
                {"kind": "Dataset", "ns": "default", "name": "ds1", "rv": "3", "op": "upsert"},
                {"kind": "Dataset", "ns": "default", "name": "ds2", "rv": None, "op": "delete"},
            ]
        },
        "applied",
        "all",
    ),
    (Upsert, {"object": DATASET}, "object", [DATASET]),
    (DatasetReport, {"numberOfSamples": 5, "updateTime": "2026-01-01T00:00:01Z"}, "numberOfSamples", "5"),
    (
        JobReady,
        {
            "event": "ready",
            "stage": "Train",
            "round": 2,
            "data": {"trainDataURL": "/t.csv", "evalDataURL": "/e.csv", "numberOfSamples": 10},
        },
        "round",
        True,
    ),
    (JobSkipped, {"event": "skipped", "stage": "Eval", "round": 1, "message": "no model"}, "message", 3),
    (JobWorkerInfo, {"event": "workerInfo", "worker": "job1-train-1", "info": {"a": 1}}, "info", "x"),
    (
        WorkerReport,
        {
            "job": "job1",
            "stage": "Train",
            "round": 1,
            "phase": "Succeeded",
            "exitCode": 0,
            "message": "",
            "output": {"models": [{"url": "/m", "format": "pkl", "metrics": {"acc": 0.9}}]},
        },
        "exitCode",
        "0",
    ),
    (WorkerInfoPost, {"namespace": "default", "ownerName": "job1", "anything": [1, 2]}, "ownerName", 5),
]
IDS = [c[0].__name__ for c in CASES]


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = dict(body)
    head, _, rest = path.partition(".")
    out[head] = _set(out[head], rest, value) if rest else value
    return out


@pytest.mark.parametrize(("model", "body", "path", "wrong"), CASES, ids=IDS)
def test_a_good_body_parses_and_serialises_exactly_as_sent(
    model: type[Body], body: dict[str, Any], path: str, wrong: Any
) -> None:
    parsed = model.parse(body)
    if model is WorkerInfoPost:
        return  # forwarded as posted, never re-serialised
    out = parsed.to_body()
    assert out == body
    assert list(out) == list(body)  # same keys in the same order: the same bytes on the wire


@pytest.mark.parametrize(("model", "body", "path", "wrong"), CASES, ids=IDS)
def test_a_wrong_type_is_refused_naming_the_field(
    model: type[Body], body: dict[str, Any], path: str, wrong: Any
) -> None:
    with pytest.raises(InvalidBody) as caught:
        model.parse(_set(body, path, wrong))
    assert caught.value.path == path, caught.value.errors
    assert path in str(caught.value)
    assert isinstance(caught.value, ProtocolError) and caught.value.reason == "invalid"


@pytest.mark.parametrize(("model", "body", "path", "wrong"), CASES, ids=IDS)
def test_an_unknown_field_from_a_newer_peer_is_ignored(
    model: type[Body], body: dict[str, Any], path: str, wrong: Any
) -> None:
    parsed = model.parse({**body, "addedInV2": {"x": 1}})
    if model is not WorkerInfoPost:
        assert parsed.to_body() == body


@pytest.mark.parametrize("body", [None, [], "text", 3])
def test_a_body_that_is_not_a_map_is_refused(body: Any) -> None:
    with pytest.raises(InvalidBody, match="must be a mapping"):
        Sync.parse(body)


def test_a_list_body_parsed_leniently_keeps_the_good_items_and_names_the_bad_ones() -> None:
    good = {"kind": "Dataset", "ns": "default", "name": "ds1", "rv": "3"}
    sync, refused = Sync.parse_lenient({"resources": [good, {**good, "kind": []}, "junk", {**good, "rv": 3}]})
    assert [r.key for r in sync.resources] == [("Dataset", "default", "ds1")]
    assert [r.path for r in refused] == ["resources[1]", "resources[2]", "resources[3]"]
    assert "resources[1].kind: Input should be a valid string" in str(refused[0])
    assert "resources[3].rv" in str(refused[2])
    ack, bad = SeqAck.parse_lenient({"epoch": "e", "seqs": [1, "2", -1, 3]})
    assert ack.seqs == [1, 3] and [b.path for b in bad] == ["seqs[1]", "seqs[2]"]
    with pytest.raises(InvalidBody, match="resources"):
        Sync.parse_lenient({"resources": {"kind": "x"}})


def test_job_reports_are_chosen_by_event_and_name_the_field() -> None:
    assert isinstance(parse_job_report({"event": "ready", "stage": "Eval", "round": 1}), JobReady)
    assert isinstance(parse_job_report({"event": "skipped", "stage": "Deploy", "round": 1}), JobSkipped)
    assert isinstance(parse_job_report({"event": "workerInfo", "worker": "w", "info": {}}), JobWorkerInfo)
    with pytest.raises(InvalidBody) as caught:
        parse_job_report({"event": "ready", "stage": "Train", "round": "1"})
    assert caught.value.path == "round"
    with pytest.raises(InvalidBody, match="event"):
        parse_job_report({"event": "exploded", "stage": "Train", "round": 1})


def test_an_applied_item_carries_refused_only_when_set() -> None:
    refused = Applied(kind="Dataset", ns="default", name="d", rv="4", op="upsert", refused="spec.url: bad")
    assert refused.to_body() == {
        "kind": "Dataset",
        "ns": "default",
        "name": "d",
        "rv": "4",
        "op": "upsert",
        "refused": "spec.url: bad",
    }


def test_the_worker_object_the_gm_sends_parses_and_round_trips() -> None:
    worker = parse_object(WORKER)
    assert isinstance(worker, Worker)
    assert worker.key == ("Worker", "default", "job1-train-1")
    assert worker.node_name == "edge-1"
    assert dump_resource(worker) == WORKER
    with pytest.raises(InvalidBody) as caught:
        parse_object(_set(WORKER, "spec.round", "1"))
    assert caught.value.path == "object.spec.round"
    with pytest.raises(InvalidBody, match=r"object\.spec\.stage"):
        parse_object(_set(WORKER, "spec.stage", "Sleep"))


def test_objects_are_parsed_into_their_api_models_and_a_wrong_field_is_named() -> None:
    assert isinstance(parse_object(DATASET), Dataset)
    with pytest.raises(InvalidBody) as caught:
        parse_object(_set(DATASET, "spec.url", 123))
    assert caught.value.path == "object.spec.url"
    model = {**DATASET, "kind": "Model", "spec": {"url": "/m.pkl", "format": "pkl"}}
    with pytest.raises(InvalidBody, match=r"object\.kind: Model is not sent to nodes"):
        parse_object(model)
    with pytest.raises(InvalidBody, match=r"object\.kind"):
        parse_object({**DATASET, "kind": "Pod"})
    assert LifelongLearningJob.KIND == "LifelongLearningJob"


def test_bodies_are_read_by_their_wire_names_only() -> None:
    with pytest.raises(InvalidBody) as caught:
        DatasetReport.parse({"number_of_samples": 5, "updateTime": "2026-01-01T00:00:01Z"})
    assert caught.value.path == "numberOfSamples"
    with pytest.raises(InvalidBody, match="updateTime"):
        DatasetReport.parse({"numberOfSamples": 5, "updateTime": "yesterday"})


def test_an_outbox_the_hello_does_not_give_stays_unknown() -> None:
    """A hello without ``outbox`` (or with part of it) leaves the missing numbers None, which the
    GM stores as unknown, never as a made-up 0 (``lifelong nodes`` shows ``<unknown>``)."""
    bare = Hello.parse({"epoch": "ep1", "resources": []})
    assert (bare.outbox.depth, bare.outbox.low_seq, bare.outbox.next_seq) == (None, None, None)
    part = Hello.parse({"epoch": "ep1", "resources": [], "outbox": {"depth": 4}})
    assert (part.outbox.depth, part.outbox.low_seq, part.outbox.next_seq) == (4, None, None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event": "workerInfo", "worker": "w", "info": {"ok": 1, "blob": b"\xff"}}, "info.blob"),
        ({"event": "ready", "stage": "Train", "round": 1, "data": {"m": [1, {"b": b"x"}]}}, "data.m"),
        ({"event": "skipped", "stage": "Eval", "round": 1, "data": {"b": b""}}, "data.b"),
    ],
)
def test_a_report_whose_free_form_part_holds_binary_is_refused_naming_it(
    body: dict[str, Any], field: str
) -> None:
    """msgpack's bin values decode to bytes, which no JSON column can hold: the GM stored a
    workerInfo's ``info`` as JSON and failed on them (found by the fault suite's fuzzing)."""
    with pytest.raises(InvalidBody) as refused:
        parse_job_report(body)
    assert field in str(refused.value) and "JSON" in str(refused.value)


def test_a_worker_report_output_holding_binary_is_refused() -> None:
    body = {"job": "job1", "stage": "Train", "round": 1, "phase": "Succeeded", "output": {"x": b"1"}}
    with pytest.raises(InvalidBody, match=r"output\.x"):
        WorkerReport.parse(body)
