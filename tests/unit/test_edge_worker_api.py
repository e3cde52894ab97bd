"""The LC's worker API (``lifelong.edge.worker_api``): what each post gets, and the server's
limits held against real sockets.

Over real HTTP on a free port (urllib and raw sockets): a post is parsed by its model before it
is kept; a report for a held job is in the outbox when the worker gets 200; one for a job not
here yet waits (202) within bounds; a full outbox or waiting room gives 503 and keeps nothing;
``Content-Length: -1``, an oversized body and half-sent requests are refused without reading
or holding a thread. In-process through httpx's WSGI transport: a post from another host is
refused (403), which a socket on loopback cannot show.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.waiting import wait_for

from lifelong.common.httpserver import HTTPLimits
from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox
from lifelong.edge.worker_api import JOB_KIND, WaitingLimits, WaitingReports, WorkerAPI

JOB = {
    "apiVersion": "sedna.io/v1alpha1",
    "kind": JOB_KIND,
    "metadata": {"name": "j1", "namespace": "default"},
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _api(
    tmp_path: Path,
    clock: Clock,
    *,
    limits: HTTPLimits | None = None,
    waiting: WaitingLimits | None = None,
    max_depth: int = 1000,
    max_report: int | None = None,
) -> WorkerAPI:
    store = Store(tmp_path / "lc.db", sync="normal")
    outbox = Outbox(store, max_depth=max_depth)
    room = WaitingReports(store, outbox, waiting, clock=clock)
    return WorkerAPI(store, outbox, "127.0.0.1", 0, limits=limits, waiting=room, max_report=max_report)


@contextlib.contextmanager
def serving(tmp_path: Path, clock: Clock, **kw: Any) -> Iterator[WorkerAPI]:
    """A started worker API (``_api``'s keywords); stopped and its store closed on the way out."""
    server = _api(tmp_path, clock, **kw)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.store.close()


@pytest.fixture
def api(tmp_path: Path, clock: Clock) -> Iterator[WorkerAPI]:
    with serving(tmp_path, clock) as server:
        yield server


def post(api: WorkerAPI, worker: str, body: Any) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{api.port}/sedna/workers/{worker}/info",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def hold_job(api: WorkerAPI) -> None:
    api.store.put_resource(JOB_KIND, "default", "j1", "1", JOB)


def outbox_bodies(api: WorkerAPI) -> list[dict[str, Any]]:
    return [e.body for e in api.outbox.table.after(0, 1000)]


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` as is and read the answer until the server closes or stops talking."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in chunks[0]:
                    break
        except TimeoutError:
            pass
        return b"".join(chunks)


# -- what a post gets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [({"namespace": 5}, "namespace"), ({"ownerName": ["j1"]}, "ownerName"), ([1, 2], "must be a mapping")],
)
def test_a_post_the_model_refuses_gets_400_naming_the_field_and_keeps_nothing(
    api: WorkerAPI, body: Any, field: str
) -> None:
    code, answer = post(api, "j1-train-1", body)
    assert code == 400 and field in answer["error"], answer
    assert api.refused == 1 and api.received == 0
    assert api.store.pending_info() == [] and api.outbox.depth() == 0
    # the next good post is still taken, kept exactly as posted
    good = {"namespace": "default", "ownerName": "j1", "status": "completed", "extra": {"a": [1]}}
    code, answer = post(api, "j1-train-1", good)
    assert code == 202 and "j1" in answer["message"], answer
    kept = api.store.pending_info()
    assert [(ns, worker, job, info) for _, ns, worker, job, info in kept] == [
        ("default", "j1-train-1", "j1", good)
    ]


def test_200_means_the_report_is_in_the_outbox(api: WorkerAPI) -> None:
    hold_job(api)
    body = {"status": "completed", "results": [{"url": "/m.pkl"}]}
    assert post(api, "j1-train-1", body) == (200, {"message": "ok"})
    assert outbox_bodies(api) == [{"event": "workerInfo", "worker": "j1-train-1", "info": body}]
    assert api.store.pending_info() == []
    assert api.snapshot()["stored"] == 1


def test_a_waiting_report_moves_to_the_outbox_when_its_job_arrives(api: WorkerAPI) -> None:
    assert post(api, "j1-train-1", {"status": "completed"})[0] == 202
    assert api.waiting.flush() == 0 and api.outbox.depth() == 0  # job not here yet
    hold_job(api)
    assert api.waiting.flush() == 1
    assert outbox_bodies(api) == [
        {"event": "workerInfo", "worker": "j1-train-1", "info": {"status": "completed"}}
    ]
    assert api.waiting.size() == (0, 0)


def test_waiting_reports_are_bounded_in_count_and_bytes_and_expire(tmp_path: Path, clock: Clock) -> None:
    with serving(tmp_path, clock, waiting=WaitingLimits(reports=3, bytes=10_000, age=60)) as api:
        for i in range(3):
            assert post(api, f"j{i}-train-1", {"status": "running"})[0] == 202
        code, answer = post(api, "j9-train-1", {"status": "running"})
        assert code == 503 and "3 reports" in answer["error"], answer
        assert api.waiting.size()[0] == 3  # the refused one was not kept
        clock.now += 61  # older than the bound's age: dropped at the next flush, counted
        api.waiting.flush()
        assert api.waiting.size() == (0, 0)
        assert api.snapshot()["expired"] == 3
        assert post(api, "j9-train-1", {"status": "running"})[0] == 202
        # the byte bound: one big report fills the room
        assert post(api, "big-train-1", {"blob": "x" * 9_990})[0] == 503


def test_a_full_outbox_gives_503_keeps_nothing_and_logs_once(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with serving(tmp_path, clock, max_depth=2) as api:
        hold_job(api)
        assert post(api, "j1-train-1", {"n": 1})[0] == 200
        assert post(api, "j1-train-1", {"n": 2})[0] == 200
        with caplog.at_level(logging.WARNING, logger="lifelong.edge.worker_api"):
            for n in range(3, 8):
                req = urllib.request.Request(
                    f"http://127.0.0.1:{api.port}/sedna/workers/j1-train-1/info",
                    data=json.dumps({"n": n}).encode(),
                    method="POST",
                )
                with pytest.raises(urllib.error.HTTPError) as err:
                    urllib.request.urlopen(req, timeout=10)
                assert err.value.code == 503 and err.value.headers["Retry-After"]
                assert "full" in json.loads(err.value.read())["error"]
        assert api.outbox.depth() == 2 and api.store.pending_info() == []
        assert api.snapshot()["full"] == 5
        assert len([r for r in caplog.records if "refused (503)" in r.getMessage()]) == 1


def test_flush_into_a_full_outbox_logs_once_and_loses_nothing(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with serving(tmp_path, clock, max_depth=1) as api:
        for n in range(3):
            assert post(api, "j1-train-1", {"n": n})[0] == 202
        hold_job(api)
        with caplog.at_level(logging.INFO, logger="lifelong.edge.worker_api"):
            assert api.waiting.flush() == 1
            for _ in range(5):  # every poll of the control loop
                assert api.waiting.flush() == 0
        assert len([r for r in caplog.records if "wait for room" in r.getMessage()]) == 1
        assert not [r for r in caplog.records if r.exc_info]
        assert api.waiting.size()[0] == 2
        for left in (1, 0):  # the GM acks one report, the next waiting one moves in
            api.outbox.table.delete([e.seq for e in api.outbox.table.after(0, 10)])
            with caplog.at_level(logging.INFO, logger="lifelong.edge.worker_api"):
                assert api.waiting.flush() == 1
            assert api.waiting.size()[0] == left
        assert len([r for r in caplog.records if "wait for room" in r.getMessage()]) == 1
        assert len([r for r in caplog.records if "room again" in r.getMessage()]) == 1


def test_a_report_too_big_for_one_message_gets_413(tmp_path: Path, clock: Clock) -> None:
    with serving(tmp_path, clock, max_report=2000) as api:
        hold_job(api)
        code, answer = post(api, "j1-train-1", {"blob": "x" * 3000})
        assert code == 413 and "over one message" in answer["error"], answer
        assert api.outbox.depth() == 0 and api.snapshot()["too_large"] == 1


@pytest.mark.parametrize("peer", ["10.1.2.3", "192.168.0.7", "::ffff:10.0.0.1", "2001:db8::1", ""])
def test_a_post_from_another_host_is_refused(tmp_path: Path, clock: Clock, peer: str) -> None:
    api = _api(tmp_path, clock)  # not started: called in-process through the WSGI transport
    hold_job(api)
    with httpx.Client(
        transport=httpx.WSGITransport(app=api.app, remote_addr=peer), base_url="http://lc"
    ) as c:
        answer = c.post("/sedna/workers/j1-train-1/info", json={"status": "completed"})
        assert answer.status_code == 403 and "this host only" in answer.json()["error"]
        assert api.outbox.depth() == 0 and api.snapshot()["forbidden"] == 1
    with httpx.Client(
        transport=httpx.WSGITransport(app=api.app, remote_addr="127.0.0.1"), base_url="http://lc"
    ) as c:
        assert c.post("/sedna/workers/j1-train-1/info", json={"status": "completed"}).status_code == 200
        assert c.get("/sedna/workers/j1-train-1/info").status_code == 405
        assert c.post("/elsewhere", json={}).status_code == 404
    assert api.outbox.depth() == 1
    api.stop()  # its listening socket, made though never served
    api.store.close()


# -- the server's limits, on real sockets --------------------------------------------------------


def test_negative_content_length_is_refused_before_the_body(api: WorkerAPI) -> None:
    hold_job(api)
    body = json.dumps({"blob": "x" * 100_000}).encode()
    head = (
        b"POST /sedna/workers/j1-train-1/info HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n"
        b"Connection: close\r\n\r\n"
    )
    answer = raw_request(api.port, head)  # the answer comes before any body is sent
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    with contextlib.suppress(OSError):  # the body, sent after the answer, is not read
        socket.create_connection(("127.0.0.1", api.port), timeout=5).sendall(body)
    assert api.outbox.depth() == 0 and api.store.pending_info() == []


def test_an_oversized_body_is_refused_from_its_content_length_without_reading_it(
    tmp_path: Path, clock: Clock
) -> None:
    with serving(tmp_path, clock, limits=HTTPLimits(max_body=64 * 1024)) as api:
        head = (
            b"POST /sedna/workers/j1-train-1/info HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 5000000\r\nConnection: close\r\n\r\n"
        )
        answer = raw_request(api.port, head)  # no body sent at all: the answer comes anyway
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert api.store.pending_info() == []


def test_half_sent_requests_hold_no_thread_and_are_closed_when_idle(tmp_path: Path, clock: Clock) -> None:
    socks: list[socket.socket] = []
    with serving(tmp_path, clock, limits=HTTPLimits(idle_timeout=2, connections=50)) as api:
        threads_before = threading.active_count()
        for _ in range(200):  # more than the connection bound
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", api.port))
            socks.append(s)
        for s in socks:
            with contextlib.suppress(OSError):  # not accepted yet
                s.send(b"POST /sedna/workers/j1-train-1/info HTTP/1.1\r\nHost: x\r\nContent-Le")
        assert threading.active_count() <= threads_before + 1
        # a good request is still answered once the idle ones are closed
        hold_job(api)
        wait_for(lambda: post(api, "j1-train-1", {"ok": 1})[0] == 200, timeout=30, what="a good post")
        assert threading.active_count() <= threads_before + 1
        assert api.store.pending_info() == []  # nothing half-sent was kept
        assert api.outbox.depth() == 1
        for s in socks:
            s.close()


def test_stop_ends_the_server_thread(tmp_path: Path, clock: Clock) -> None:
    api = _api(tmp_path, clock)
    api.start()
    api.stop()
    assert not any(t.name == "lc-worker-api" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", api.port), timeout=2).close()
    api.store.close()
