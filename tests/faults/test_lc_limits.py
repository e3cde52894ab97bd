"""The LC's worker API holds its limits, against a real ``lifelong lc`` (and a real GM and broker).

Each test is one finding of issue 12's "What was measured", checked on the running process
through its sockets, its ``/metrics`` endpoint, its database (read-only) and its log:

* ``Content-Length: -1`` with a 5 MB body: refused before the body is read; nothing stored,
  nothing dropped later ("can never be sent");
* 600 half-sent requests: the LC's thread count stays bounded, nothing is stored for them, and
  a good report goes through afterwards;
* reports for workers of a job the LC does not hold: kept (202) up to the bound, then refused
  with 503 and ``Retry-After``, counted (``lifelong_lc_worker_posts_total{result="full"}``);
* a full outbox (GM down): 503 with ``Retry-After``, counted, ONE log line for the spell (not
  one per post or per poll), no traceback.

One GM and one LC serve the whole module (the outbox bound is small, 60 reports); the full
outbox comes last, as it stops the GM. The embedded broker only: what is tested is the LC's
HTTP side, which no broker changes.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.brokers import make_broker
from harness.faults import JOB, Rig, Tally
from harness.waiting import free_port, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

OUTBOX_MAX = 60


@dataclass
class LC:
    rig: Rig
    metrics_port: int

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.rig.lc.worker_api_port}"

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        total = 0.0
        for line in text.splitlines():
            m = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
            if m and all(part in (m.group(1) or "").split(",") for part in want.split(",") if part):
                total += float(m.group(2))
        return total

    def post(self, worker: str, body: object) -> tuple[int, dict[str, str]]:
        req = urllib.request.Request(
            f"{self.api}/sedna/workers/{worker}/info",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers)

    def db(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(f"file:{self.rig.lc.state_dir / 'lc.db'}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def holds_report_of(self, worker: str) -> bool:
        """Whether the outbox or the waiting room holds a report naming ``worker``."""
        needle = worker.encode()
        outbox = self.db("SELECT COUNT(*) FROM outbox WHERE instr(body, ?) > 0", (needle,))[0][0]
        waiting = self.db("SELECT COUNT(*) FROM pending_info WHERE worker=?", (worker,))[0][0]
        return bool(outbox or waiting)

    def log(self) -> str:
        return self.rig.lc.log_path.read_text(errors="replace")

    def threads(self) -> int:
        assert self.rig.lc.proc is not None
        status = Path(f"/proc/{self.rig.lc.proc.pid}/status").read_text()
        return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LC]:
    tmp = tmp_path_factory.mktemp("lc-limits")
    broker = make_broker("amqtt", tmp)
    broker.start()
    metrics_port = free_port()
    prefix = f"t{uuid.uuid4().hex[:10]}/v1"
    rig = Rig(
        tmp,
        broker.url,
        prefix,
        lc_extra=[
            "--metrics-port",
            str(metrics_port),
            "--outbox-max-depth",
            str(OUTBOX_MAX),
            "--sync",
            "normal",
        ],
    )
    try:
        rig.start_gm()
        rig.apply()
        rig.start_lc()
        rig.wait_in_sync()
        yield LC(rig, metrics_port)
    finally:
        rig.stop()
        broker.stop()


def _record(scenario: str, tried: int, applied: int, note: str) -> None:
    t = Tally(f"LC worker API: {scenario}", "amqtt", runs=1, tried=tried, applied=applied)
    t.note = note
    t.record()


def _raw(port: int, head: bytes, body: bytes = b"", timeout: float = 30.0) -> bytes:
    """Send ``head`` then ``body`` (while reading: the server may answer and close early);
    return what the server answered."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    answer = bytearray()

    def send() -> None:
        try:
            sock.sendall(head)
            for start in range(0, len(body), 64 * 1024):
                sock.sendall(body[start : start + 64 * 1024])
        except OSError:
            pass  # the server answered and closed: the rest of the body is refused

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
            if b"\r\n\r\n" in answer:
                head_end = answer.index(b"\r\n\r\n") + 4
                m = re.search(rb"content-length:\s*(\d+)", answer[:head_end], re.I)
                if m and len(answer) >= head_end + int(m.group(1)):
                    break
    except OSError:
        pass
    finally:
        sock.close()
    sender.join(10)
    return bytes(answer)


def _status(answer: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    assert m, f"no HTTP answer: {answer[:200]!r}"
    return int(m.group(1))


def test_negative_content_length_with_a_5mb_body_is_refused_and_nothing_stored(lc: LC) -> None:
    worker = f"{JOB}-train-901"
    body = json.dumps({"ownerName": JOB, "pad": "x" * (5 << 20)}).encode()
    head = (
        f"POST /sedna/workers/{worker}/info HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: -1\r\n\r\n"
    ).encode()
    stored_before = lc.metric("lifelong_lc_worker_posts_total", result="stored")
    answer = _raw(lc.rig.lc.worker_api_port, head, body)
    status = _status(answer)
    assert status in (400, 413), answer[:300]
    # nothing stored, so nothing can be dropped later
    assert not lc.holds_report_of(worker)
    assert lc.metric("lifelong_lc_worker_posts_total", result="stored") == stored_before
    # the LC still takes a good report of the same worker (200: in the outbox)
    assert lc.post(worker, {"ownerName": JOB, "ok": 1})[0] == 200
    assert lc.holds_report_of(worker) or lc.metric("lifelong_lc_outbox_depth") >= 0
    assert "can never be sent" not in lc.log()
    assert "Traceback" not in lc.log()
    _record("Content-Length -1 with a 5 MB body", 1, 0, f"answered {status}; nothing stored; LC up")


def test_600_half_sent_requests_keep_threads_bounded(lc: LC) -> None:
    port = lc.rig.lc.worker_api_port
    before = lc.threads()
    socks: list[socket.socket] = []
    try:
        for i in range(600):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            head = f"POST /sedna/workers/half-{i}/info HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{"
            s.sendall(head.encode())
            socks.append(s)
        # Every connection is open and waiting; the LC's threads have not grown with them.
        most = max(lc.threads() for _ in range(20))
        assert most <= before + 4, (before, most)
    finally:
        for s in socks:
            s.close()
    assert not lc.db("SELECT COUNT(*) FROM pending_info WHERE worker LIKE 'half-%'")[0][0]
    worker = f"{JOB}-train-902"
    t0 = time.monotonic()
    wait_for(
        lambda: lc.post(worker, {"ownerName": JOB})[0] == 200,
        timeout=90,
        interval=0.5,
        what=f"a good report accepted after the half-sent requests\n{lc.rig.lc.log_tail(20)}",
    )
    assert "Traceback" not in lc.log()
    _record(
        "600 half-sent requests",
        600,
        0,
        f"threads {before} -> at most {most}; none stored; a good report 200 "
        f"{time.monotonic() - t0:.1f} s after",
    )


def test_reports_for_an_unknown_job_wait_within_their_bound(lc: LC) -> None:
    """The waiting room's count bound (1000 reports, ``WaitingLimits``): 202 up to it, 503 with
    Retry-After beyond, counted; the gauge says how many wait."""
    limit = 1000
    waiting = int(lc.metric("lifelong_lc_worker_posts_waiting", unit="reports"))
    full_before = lc.metric("lifelong_lc_worker_posts_total", result="full")
    answers: dict[int, int] = {}
    retry_after: set[str] = set()
    for i in range(limit - waiting + 20):
        status, headers = lc.post(f"ghost-train-{i}", {"ownerName": "ghost"})
        answers[status] = answers.get(status, 0) + 1
        if status == 503:
            retry_after.add(headers.get("Retry-After", ""))
    assert answers == {202: limit - waiting, 503: 20}, answers
    assert retry_after == {"5"}
    assert lc.metric("lifelong_lc_worker_posts_waiting", unit="reports") == limit
    assert lc.metric("lifelong_lc_worker_posts_total", result="full") - full_before == 20
    assert lc.db("SELECT COUNT(*) FROM pending_info")[0][0] == limit
    assert "Traceback" not in lc.log()
    _record(
        "reports for a job the LC does not hold",
        limit - waiting + 20,
        limit - waiting,
        f"{limit - waiting} kept (202), 20 refused 503 + Retry-After, counted",
    )


def test_a_full_outbox_answers_503_and_logs_once(lc: LC) -> None:
    lc.rig.gm.kill()  # nothing acknowledges: the outbox fills
    log_start = len(lc.log())
    full_before = lc.metric("lifelong_lc_worker_posts_total", result="full")
    answers: dict[int, int] = {}
    retry_after: set[str] = set()
    for i in range(OUTBOX_MAX + 40):
        status, headers = lc.post(f"{JOB}-eval-{i}", {"ownerName": JOB})
        answers[status] = answers.get(status, 0) + 1
        if status == 503:
            retry_after.add(headers.get("Retry-After", ""))
    assert set(answers) == {200, 503}, answers
    assert answers[503] >= 40
    assert retry_after == {"5"}
    assert lc.metric("lifelong_lc_worker_posts_total", result="full") - full_before == answers[503]
    assert lc.metric("lifelong_lc_outbox_depth") == OUTBOX_MAX
    # Let the control loop poll many times (0.2 s) with the outbox full.
    age = lc.metric("lifelong_lc_outbox_oldest_age_seconds")
    wait_for(lambda: lc.metric("lifelong_lc_outbox_oldest_age_seconds") >= age + 3, timeout=30)
    lc.rig.lc.check_alive()
    text = lc.log()[log_start:]
    refused = [line for line in text.splitlines() if "refused (503)" in line]
    assert len(refused) == 1, refused
    warned = [line for line in text.splitlines() if " WARNING " in line and "outbox" in line.lower()]
    assert len(warned) <= 2, warned  # the post's line, and at most the flush's own
    assert "Traceback" not in text
    _record(
        "full outbox (GM down)",
        OUTBOX_MAX + 40,
        answers[200],
        f"{answers[200]} stored (200), {answers[503]} refused 503 + Retry-After, counted; "
        f"{len(refused)} log line; no traceback",
    )
