"""Workers' logs without a broker: the bodies' bounds (``LogRequest``, ``LogAnswer``), the LC's
log files (``edge/worker_logs.py``: reading by offset and by tail, rotation with offsets kept),
the LC session answering ``log`` requests, and the GM's ``WorkerLogRequests`` (which node,
matching answers, the deadline, an answer from the wrong node)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import lc_objects

from lifelong.cloud.logs import LogTimeout, LogUnavailable, WorkerLogRequests
from lifelong.cloud.stores.base import NotFound
from lifelong.cloud.stores.sqlite import SqliteStore
from lifelong.common.codec import Codec, decode, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.errors import InvalidBody, ValidationError
from lifelong.common.messages import MAX_LOG_CHUNK, MAX_TAIL_LINES, LogAnswer, LogRequest
from lifelong.common.topics import Topics
from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox
from lifelong.edge.session import Session
from lifelong.edge.worker_logs import WorkerLogs, log_path

NODE = "node-a"
TOPICS = Topics("lifelong")

# -- the bodies -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ns": "default", "worker": "w", "maxBytes": 0}, "maxBytes"),
        ({"ns": "default", "worker": "w", "maxBytes": MAX_LOG_CHUNK + 1}, "maxBytes"),
        ({"ns": "default", "worker": "w", "tailLines": MAX_TAIL_LINES + 1}, "tailLines"),
        ({"ns": "default", "worker": "w", "tailLines": -1}, "tailLines"),
        ({"ns": "default", "worker": "w", "offset": -1}, "offset"),
        ({"ns": "default", "worker": "w", "offset": "3"}, "offset"),
        ({"ns": "default", "worker": "../etc"}, "worker"),
        ({"ns": "a/b", "worker": "w"}, "ns"),
        ({"ns": "default"}, "worker"),
    ],
)
def test_a_log_request_out_of_its_bounds_is_refused_naming_the_field(
    body: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidBody) as err:
        LogRequest.parse(body)
    assert err.value.path == field, err.value


def test_a_log_request_leaves_out_what_it_does_not_ask() -> None:
    req = LogRequest(ns="default", worker="job1-train-1", tail_lines=5)
    assert req.to_body() == {
        "ns": "default",
        "worker": "job1-train-1",
        "tailLines": 5,
        "maxBytes": MAX_LOG_CHUNK,
    }
    assert LogRequest.parse(req.to_body()) == req


@pytest.mark.parametrize(
    "body",
    [
        {"request": "r", "error": "no reason given"},
        {"request": "r", "reason": "invalid"},
        {"request": "r", "start": 5, "end": 3, "size": 9},
        {"request": "r", "start": 0, "end": 3, "size": 2},
        {
            "request": "r",
            "data": "x" * (MAX_LOG_CHUNK + 1),
            "end": MAX_LOG_CHUNK + 1,
            "size": MAX_LOG_CHUNK + 1,
        },
        {"request": "", "data": ""},
        {"request": "r", "reason": "bored", "error": "x"},
        {"request": "r", "running": "yes"},
    ],
)
def test_a_log_answer_that_does_not_hold_together_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidBody):
        LogAnswer.parse(body)


# -- the LC's files ---------------------------------------------------------------------------------


def write(logs: WorkerLogs, text: bytes, name: str = "w1") -> Path:
    path = log_path(logs.dir, "default", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(text)
    return path


def ask(logs: WorkerLogs, name: str = "w1", **kw: Any) -> LogAnswer:
    return logs.answer("req-1", LogRequest(ns="default", worker=name, **kw))


def test_reading_by_offset_and_by_tail(tmp_path: Path) -> None:
    logs = WorkerLogs(tmp_path, node=NODE, running=lambda ns, name: name == "w1")
    write(logs, b"one\ntwo\nthree\nfour")
    whole = ask(logs)
    assert (whole.data, whole.start, whole.end, whole.size, whole.running) == (
        "one\ntwo\nthree\nfour",
        0,
        18,
        18,
        True,
    )
    assert ask(logs, offset=8, max_bytes=6).data == "three\n"
    assert (ask(logs, offset=99).start, ask(logs, offset=99).data) == (18, "")
    tail = ask(logs, tail_lines=2)
    assert (tail.data, tail.start, tail.truncated) == ("three\nfour", 8, False)
    assert ask(logs, tail_lines=0).data == ""
    assert ask(logs, tail_lines=10).data == "one\ntwo\nthree\nfour"
    # a window of 12 bytes starts inside "two": that part is not shown, and fewer lines than asked fit
    cut = ask(logs, tail_lines=3, max_bytes=12)
    assert (cut.data, cut.truncated) == ("three\nfour", True)
    # one line longer than the window: its end, marked truncated
    long = ask(logs, tail_lines=1, max_bytes=3)
    assert (long.data, long.truncated) == ("our", True)


def test_a_worker_without_a_log_here_is_unknown(tmp_path: Path) -> None:
    answer = ask(WorkerLogs(tmp_path, node=NODE), name="never-ran")
    assert answer.reason == "unknown_worker" and f"no log on node {NODE}" in (answer.error or "")


def test_a_character_cut_by_the_chunk_is_left_for_the_next_answer(tmp_path: Path) -> None:
    logs = WorkerLogs(tmp_path, node=NODE)
    write(logs, "aé-é".encode())  # é is two bytes
    first = ask(logs, max_bytes=2)
    assert (first.data, first.end) == ("a", 1)
    second = ask(logs, offset=first.end, max_bytes=64)
    assert second.data == "é-é"


def test_rotation_bounds_the_file_and_keeps_offsets(tmp_path: Path) -> None:
    logs = WorkerLogs(tmp_path, node=NODE, max_bytes=100)
    path = write(logs, b"".join(b"old %03d\n" % i for i in range(20)))  # 160 bytes
    assert logs.rotate("default", "w1") is True
    assert path.stat().st_size == 0 and path.with_name(path.name + ".1").stat().st_size == 160
    write(logs, b"new 1\n")
    answer = ask(logs, offset=144)
    assert (answer.data, answer.start, answer.end, answer.size) == (
        "old 018\nold 019\nnew 1\n",
        144,
        166,
        166,
    )
    # rotated twice: the first 160 bytes are gone, a follower at offset 0 is moved on
    write(logs, b"x" * 200)
    assert logs.rotate("default", "w1") is True
    assert logs.rotate("default", "w1") is False  # under the bound now
    gone = ask(logs, offset=0, max_bytes=10)
    assert (gone.first, gone.start, gone.data) == (160, 160, "new 1\nxxxx")
    assert ask(logs, tail_lines=1).data == "x" * 200
    on_disk = sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))
    assert on_disk <= 2 * 206 + 10


def test_rotating_one_worker_that_fails_does_not_stop_the_others(tmp_path: Path) -> None:
    logs = WorkerLogs(tmp_path, node=NODE, max_bytes=10)
    write(logs, b"y" * 50, name="w2")
    write(logs, b"z" * 50, name="w3")
    blocked = log_path(tmp_path, "default", "w2")
    blocked.with_name(blocked.name + ".1.tmp").mkdir()  # the copy cannot be written
    logs.rotate_running([("default", "w2"), ("default", "w3")])
    assert log_path(tmp_path, "default", "w3").stat().st_size == 0
    assert logs.failures.snapshot() == {"worker-logs": 1}


# -- the LC session answers -------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "lc.db", sync="normal")
    yield s
    s.close()


class Wire:
    """Records what the session publishes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Envelope]] = []

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.sent.append((topic, decode(payload)))


def session(store: Store, wire: Wire, logs: WorkerLogs) -> Session:
    return Session(
        store,
        Outbox(store),
        node=NODE,
        topics=TOPICS,
        codec=Codec.MSGPACK,
        max_payload=65536,
        publish=wire,
        on_log_request=logs.answer,
    )


def down(s: Session, *payloads: bytes) -> None:
    for payload in payloads:
        s.handle_message(TOPICS.down_ctl(NODE), payload)
    s.run_pending()


def log_request(body: dict[str, Any]) -> tuple[str, bytes]:
    env = Envelope.new(node=NODE, kind=CONTROL_KIND, op=Op.LOG, body=body)
    return env.id, encode(env)


def answers(wire: Wire) -> list[LogAnswer]:
    return [
        LogAnswer.parse(env.body)
        for topic, env in wire.sent
        if env.op is Op.LOG and topic == TOPICS.up_ctl(NODE)
    ]


def test_the_session_answers_a_log_request_on_up_ctl(store: Store, tmp_path: Path) -> None:
    logs = WorkerLogs(tmp_path / "workers", node=NODE)
    write(logs, b"hello\n")
    wire = Wire()
    s = session(store, wire, logs)
    rid, payload = log_request({"ns": "default", "worker": "w1"})
    bad_id, bad = log_request({"ns": "default", "worker": "w1", "maxBytes": "all"})
    down(s, payload, bad)
    got = answers(wire)
    assert [(a.request, a.data, a.reason) for a in got] == [(rid, "hello\n", None), (bad_id, "", "invalid")]
    assert "maxBytes" in (got[1].error or "")
    assert s.rejected == {"invalid": 1}


def test_an_answer_over_the_payload_limit_is_read_again_smaller(store: Store, tmp_path: Path) -> None:
    logs = WorkerLogs(tmp_path / "workers", node=NODE)
    write(logs, b"\x01" * 20000)  # JSON would escape each byte to six; msgpack keeps one
    wire = Wire()
    s = session(store, wire, logs)
    s.max_payload = 8000
    _rid, payload = log_request({"ns": "default", "worker": "w1"})
    down(s, payload)
    (answer,) = answers(wire)
    assert answer.reason is None and 1024 <= answer.end < 8000 and answer.size == 20000
    s.max_payload = 600  # not even 1 KiB fits
    down(s, payload)
    assert answers(wire)[-1].reason == "too_large"


# -- the GM's side ----------------------------------------------------------------------------------


@pytest.fixture
def gm_store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    job = lc_objects.job("job1", "node-t", "ds1", tmp_path, conditions=[])
    for stage, node in (("eval", "node-e"), ("deploy", "node-d")):
        job["spec"][f"{stage}Spec"]["template"]["spec"]["nodeName"] = node
    s.apply(job)
    yield s
    s.close()


class Edge:
    """Plays the nodes: answers each request (or not) by calling the GM's ``on_answer``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Envelope]] = []
        self.answer_as: str | None = None  # the node that answers; None: nobody
        self.logs: WorkerLogRequests | None = None

    def __call__(self, topic: str, payload: bytes) -> None:
        env = decode(payload)
        self.requests.append((topic, env))
        if self.answer_as is not None and self.logs is not None:
            body = LogAnswer(request=env.id, data="hi\n", end=3, size=3).to_body()
            reply = Envelope.new(node=self.answer_as, kind=CONTROL_KIND, op=Op.LOG, body=body)
            threading.Thread(target=self.logs.on_answer, args=(self.answer_as, reply)).start()


def gm(store: SqliteStore, edge: Edge, rejected: list[str]) -> WorkerLogRequests:
    logs = WorkerLogRequests(store, TOPICS, edge, node_online=lambda node: False, reject=rejected.append)
    edge.logs = logs
    return logs


def test_the_gm_asks_the_node_of_the_stage_and_returns_its_answer(gm_store: SqliteStore) -> None:
    edge, rejected = Edge(), list[str]()
    logs = gm(gm_store, edge, rejected)
    edge.answer_as = "node-e"
    got = logs.fetch("default", "job1-eval-3", tail=5, timeout=5)
    assert got["node"] == "node-e" and got["data"] == "hi\n"
    topic, env = edge.requests[0]
    assert topic == TOPICS.down_ctl("node-e") and env.op is Op.LOG
    assert LogRequest.parse(env.body) == LogRequest(ns="default", worker="job1-eval-3", tail_lines=5)


def test_a_finished_retry_is_found_on_the_node_of_its_stage(gm_store: SqliteStore) -> None:
    """A retried worker (``JOB-STAGE-ROUND-retryN``) whose Worker object is gone: its node
    comes from the job's stage, as for a first attempt."""
    edge, rejected = Edge(), list[str]()
    logs = gm(gm_store, edge, rejected)
    edge.answer_as = "node-d"
    got = logs.fetch("default", "job1-deploy-2-retry1", tail=5, timeout=5)
    assert got["node"] == "node-d" and got["data"] == "hi\n"
    assert edge.requests[0][0] == TOPICS.down_ctl("node-d")


def test_an_answer_from_another_node_is_rejected_and_the_request_times_out(gm_store: SqliteStore) -> None:
    edge, rejected = Edge(), list[str]()
    logs = gm(gm_store, edge, rejected)
    edge.answer_as = "node-d"  # the train worker runs on node-t
    with pytest.raises(LogTimeout, match=r"node node-t did not answer .* within 1s .*as offline"):
        logs.fetch("default", "job1-train-1", timeout=1)
    assert rejected == ["identity"]


def test_unknown_workers_bad_names_and_lc_errors_are_clear(gm_store: SqliteStore) -> None:
    edge, rejected = Edge(), list[str]()
    logs = gm(gm_store, edge, rejected)
    with pytest.raises(NotFound, match='worker "job2-train-1" not found in namespace default'):
        logs.fetch("default", "job2-train-1")
    with pytest.raises(NotFound):
        logs.fetch("default", "job1-fit-1")
    with pytest.raises(ValidationError, match="name: must be a DNS-1123 subdomain"):
        logs.fetch("default", "Job1")
    with pytest.raises(ValidationError, match="tail: must be between -1 and"):
        logs.fetch_query("default", "job1-train-1", {"tail": ["-2"]})
    with pytest.raises(ValidationError, match="timeout: must be an integer"):
        logs.fetch_query("default", "job1-train-1", {"timeout": ["soon"]})
    assert edge.requests == []  # nothing was asked

    def refuse(topic: str, payload: bytes) -> None:
        env = decode(payload)
        body = LogAnswer(
            request=env.id, error="cannot be read: Permission denied", reason="unreadable"
        ).to_body()
        logs.on_answer("node-t", Envelope.new(node="node-t", kind=CONTROL_KIND, op=Op.LOG, body=body))

    logs.publish = refuse
    with pytest.raises(LogUnavailable, match="node node-t: cannot be read: Permission denied"):
        logs.fetch("default", "job1-train-1", timeout=5)


def test_a_garbage_answer_is_counted_and_dropped(gm_store: SqliteStore) -> None:
    rejected: list[str] = []
    logs = gm(gm_store, Edge(), rejected)
    logs.on_answer("node-t", Envelope.new(node="node-t", kind=CONTROL_KIND, op=Op.LOG, body={"request": 3}))
    assert rejected == ["invalid"]
