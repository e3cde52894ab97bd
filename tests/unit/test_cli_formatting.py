"""Pure formatting of the operator commands: ``tail`` lines, ``describe``'s timeline, last
reports and nodes, ``lifelong nodes``. No broker, no GM."""

from __future__ import annotations

import json
import time

from lifelong.client.format import job_nodes, last_reports, nodes_table, timeline
from lifelong.common.codec import Codec, encode
from lifelong.common.envelope import Envelope, Op
from lifelong.common.topics import Topics
from lifelong.tail import describe_message

TOPICS = Topics("lifelong/v1")


def report(codec: Codec) -> bytes:
    env = Envelope(
        id="m1",
        node="edge-1",
        kind="LifelongLearningJob",
        ns="default",
        name="job1",
        op=Op.REPORT,
        seq=12,
        ts=1767225600.25,
        body={"event": "ready", "stage": "Train", "round": 1},
    )
    return encode(env, codec)


def test_tail_line_decodes_msgpack_and_json_alike() -> None:
    topic = TOPICS.up("edge-1", "LifelongLearningJob", "default", "job1")
    lines = [describe_message(topic, report(c), False, TOPICS) for c in (Codec.MSGPACK, Codec.JSON)]
    assert lines[0] == lines[1]
    line = lines[0]
    assert line is not None
    assert "  edge-1  up  " in line and "report" in line and "LifelongLearningJob default/job1" in line
    assert "seq=12" in line and '{"event": "ready", "stage": "Train", "round": 1}' in line


def test_tail_filters_by_kind_case_insensitively() -> None:
    topic = TOPICS.up("edge-1", "LifelongLearningJob", "default", "job1")
    assert describe_message(topic, report(Codec.JSON), False, TOPICS, kind="dataset") is None
    assert describe_message(topic, report(Codec.JSON), False, TOPICS, kind="lifelonglearningjob")


def test_tail_json_output_is_one_object() -> None:
    topic = TOPICS.up("edge-1", "LifelongLearningJob", "default", "job1")
    line = describe_message(topic, report(Codec.MSGPACK), True, TOPICS, output="json")
    assert line is not None
    record = json.loads(line)
    assert record["topic"] == topic and record["retained"] is True
    assert record["envelope"]["seq"] == 12 and record["envelope"]["body"]["round"] == 1


def test_tail_shows_undecodable_payloads_with_the_reason() -> None:
    topic = TOPICS.up_ctl("edge-1")
    line = describe_message(topic, b"\xc1garbage", False, TOPICS)
    assert line is not None and "!! " + topic in line and "not a valid msgpack envelope" in line


def test_tail_cuts_long_bodies() -> None:
    topic = TOPICS.up("edge-1", "LifelongLearningJob", "default", "job1")
    line = describe_message(topic, report(Codec.JSON), False, TOPICS, width=10)
    assert line is not None and line.endswith('{"event...')


def test_timeline_numbers_rounds_and_shows_the_time_between_conditions() -> None:
    conds = [
        {
            "stage": "Train",
            "type": "Waiting",
            "lastTransitionTime": "2026-01-01T10:00:00Z",
            "reason": "JobCreated",
        },
        {"stage": "Train", "type": "Ready", "lastTransitionTime": "2026-01-01T10:00:07Z"},
        {
            "stage": "Train",
            "type": "Failed",
            "lastTransitionTime": "2026-01-01T10:01:07Z",
            "message": "x" * 100,
        },
    ]
    lines = timeline(conds)
    assert lines[0].split() == ["ROUND", "TIME", "+", "STAGE", "TYPE", "REASON", "MESSAGE"]
    assert lines[1].split()[:4] == ["-", "2026-01-01T10:00:00Z", "Train", "Waiting"]
    assert lines[2].split()[:5] == ["1", "2026-01-01T10:00:07Z", "+7s", "Train", "Ready"]
    assert "+60s" in lines[3] and lines[3].endswith("x" * 77 + "...")


def test_last_reports_show_models_and_metrics() -> None:
    info = {
        "job1-train-1": {"results": [{"url": "/m.pkl", "metrics": {"accuracy": 0.912345}}]},
        "job1-deploy-1": {"results": []},
        "job1-other-1": {"status": "odd"},
    }
    assert last_reports(info) == [
        "job1-deploy-1: posted no models",
        'job1-other-1: {"status": "odd"}',
        "job1-train-1: /m.pkl (accuracy=0.9123)",
    ]


def test_job_nodes_lists_each_node_with_its_roles() -> None:
    def template(node: str) -> dict[str, object]:
        return {"template": {"spec": {"nodeName": node}}}

    job = {"spec": {"trainSpec": template("a"), "evalSpec": template("b"), "deploySpec": template("a")}}
    dataset = {"spec": {"nodeName": "a"}}
    assert job_nodes(job, dataset) == [("a", "dataset,train,deploy"), ("b", "eval")]


def test_nodes_table() -> None:
    items = [
        {
            "node": "edge-1",
            "online": True,
            "agent": "lifelong-lc/0.1.0",
            "lastHello": time.time() - 5,
            "unacked": 0,
            "outbox": {"depth": 4, "lowSeq": 10, "nextSeq": 14},
        },
        {"node": "edge-2", "online": False, "agent": "", "lastHello": 0, "unacked": 3},
    ]
    lines = nodes_table(items).splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "LAST", "HELLO", "AGENT", "UNACKED", "DOWN", "OUTBOX@HELLO"]
    assert lines[1].split()[:2] == ["edge-1", "Online"] and "ago" in lines[1]
    assert lines[1].split()[-1] == "4"
    assert lines[2].split() == ["edge-2", "Offline", "<never>", "<none>", "3", "<unknown>"]
