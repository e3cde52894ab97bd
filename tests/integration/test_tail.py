"""``lifelong tail`` against a real broker: it decodes msgpack and JSON envelopes, shows a
payload it cannot decode, filters by node and kind, and exits after ``--count`` messages.

Each test uses its own topic prefix. Messages that are already on the broker when ``tail``
subscribes are published retained, so nothing races; the live case waits for ``tail``'s
"# tailing" line (printed once its subscription is acknowledged) before publishing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from harness.brokers import Broker
from harness.waiting import wait_for

from lifelong.common.bus import BusClient
from lifelong.common.codec import Codec, encode
from lifelong.common.envelope import Envelope, Op
from lifelong.common.topics import Topics


@pytest.fixture
def prefix() -> str:
    return f"test/{uuid.uuid4().hex[:10]}"


@pytest.fixture
def publisher(broker: Broker) -> Iterator[BusClient]:
    client = BusClient(client_id=f"pub-{uuid.uuid4().hex[:8]}", address=broker.url)
    client.start()
    assert client.wait_connected(10), client.last_error
    try:
        yield client
    finally:
        client.close()


def envelope(node: str, kind: str, name: str, op: Op, body: dict[str, object], **kw: object) -> Envelope:
    return Envelope(
        id=uuid.uuid4().hex,
        node=node,
        kind=kind,
        ns="default",
        name=name,
        op=op,
        ts=time.time(),
        body=body,
        **kw,
    )


def tail(broker: Broker, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "lifelong", "tail", "--broker", broker.url, "--prefix", prefix, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_tail_decodes_retained_msgpack_json_and_garbage(
    broker: Broker, prefix: str, publisher: BusClient
) -> None:
    topics = Topics(prefix)
    job_topic = topics.up("edge-1", "LifelongLearningJob", "default", "job1")
    ds_topic = topics.up("edge-2", "Dataset", "default", "ds1")
    job = envelope("edge-1", "LifelongLearningJob", "job1", Op.REPORT, {"event": "ready", "round": 1}, seq=3)
    ds = envelope("edge-2", "Dataset", "ds1", Op.REPORT, {"numberOfSamples": 42}, seq=9)
    publisher.publish(job_topic, encode(job, Codec.MSGPACK), retain=True).wait(10)
    publisher.publish(ds_topic, encode(ds, Codec.JSON), retain=True).wait(10)
    publisher.publish(topics.up_ctl("edge-3"), b"\xc1 not msgpack", retain=True).wait(10)

    out = tail(broker, prefix, "--count", "3", "-o", "json")
    assert out.returncode == 0, out.stderr
    records = {r["topic"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert records[job_topic]["envelope"]["body"] == {"event": "ready", "round": 1}
    assert records[job_topic]["envelope"]["seq"] == 3 and records[job_topic]["retained"] is True
    assert records[ds_topic]["envelope"]["body"] == {"numberOfSamples": 42}
    assert "not a valid msgpack envelope" in records[topics.up_ctl("edge-3")]["error"]

    text = tail(broker, prefix, "--node", "edge-2", "--count", "1")
    assert text.returncode == 0, text.stderr
    line = text.stdout.strip()
    assert "edge-2" in line and "report" in line and "Dataset default/ds1" in line
    assert "seq=9" in line and '{"numberOfSamples": 42}' in line and line.endswith("(retained)")

    kind = tail(broker, prefix, "--kind", "lifelonglearningjob", "--count", "1")
    assert kind.returncode == 0, kind.stderr
    assert "LifelongLearningJob default/job1" in kind.stdout and "Dataset" not in kind.stdout


def test_tail_prints_live_traffic(broker: Broker, prefix: str, publisher: BusClient) -> None:
    topics = Topics(prefix)
    cmd = [
        sys.executable,
        "-m",
        "lifelong",
        "tail",
        "--broker",
        broker.url,
        "--prefix",
        prefix,
        "--count",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = threading.Event()

        def read_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if line.startswith("# tailing"):
                    ready.set()

        threading.Thread(target=read_stderr, daemon=True).start()
        wait_for(ready.is_set, timeout=30, what="tail subscribed")
        for i in range(2):
            env = envelope("edge-1", "Worker", f"w{i}", Op.REPORT, {"phase": "Running"}, seq=i + 1)
            publisher.publish(topics.up("edge-1", "Worker", "default", f"w{i}"), encode(env)).wait(10)
        assert proc.stdout is not None
        stdout = proc.stdout.read()  # EOF once tail exits after --count messages
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
    lines = stdout.splitlines()
    assert len(lines) == 2
    assert "Worker default/w0" in lines[0] and "seq=1" in lines[0] and "retained" not in lines[0]
    assert "Worker default/w1" in lines[1] and '{"phase": "Running"}' in lines[1]
