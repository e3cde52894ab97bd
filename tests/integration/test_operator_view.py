"""What an operator sees with the standard mosquitto tools, on every broker.

With the JSON codec, ``mosquitto_sub -v -t 'lifelong/#'`` prints each message as its topic
followed by a readable envelope; msgpack (the default) is binary but decodes to the same
envelope. Both run against the real brokers of the ``broker`` fixture.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from harness.brokers import Broker
from harness.waiting import wait_for

from lifelong.common.bus import BusClient
from lifelong.common.codec import Codec, decode, encode
from lifelong.common.envelope import Envelope, Op
from lifelong.common.topics import Topics

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto-clients missing")


def _sub(broker: Broker, topic_filter: str, count: int, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [
        "mosquitto_sub",
        "-h",
        broker.host,
        "-p",
        str(broker.port),
        "-v",
        "-C",
        str(count),
        "-W",
        "30",
        "-t",
        topic_filter,
        *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _publish_until_seen(broker: Broker, proc: subprocess.Popen[bytes], topic: str, payload: bytes) -> bytes:
    """Publish (repeatedly, until mosquitto_sub has subscribed and printed) and return its output."""
    client = BusClient(client_id="operator-view-test", address=broker.url)
    client.start()
    try:
        assert client.wait_connected(15)

        def printed() -> bool:
            if proc.poll() is not None:
                return True
            client.publish(topic, payload).wait(10)
            return False

        wait_for(printed, timeout=20, interval=0.1, what="mosquitto_sub to print the message")
    finally:
        client.close()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode(errors="replace")
    return out


def test_json_envelopes_are_readable_with_mosquitto_sub(broker: Broker, prefix: str) -> None:
    topics = Topics(prefix)
    topic = topics.up("edge-1", "Dataset", "default", "atcii-ds")
    env = Envelope.new(
        node="edge-1",
        kind="Dataset",
        ns="default",
        name="atcii-ds",
        op=Op.REPORT,
        seq=3,
        body={"numberOfSamples": 42},
    )
    proc = _sub(broker, f"{prefix}/#", 1)
    out = _publish_until_seen(broker, proc, topic, encode(env, Codec.JSON))
    line = out.decode().strip().splitlines()[0]
    shown_topic, _, text = line.partition(" ")
    assert shown_topic == topic
    obj = json.loads(text)
    assert obj["op"] == "report" and obj["node"] == "edge-1" and obj["seq"] == 3
    assert obj["body"] == {"numberOfSamples": 42}


def test_msgpack_default_is_binary_but_decodes_the_same(broker: Broker, prefix: str) -> None:
    topics = Topics(prefix)
    topic = topics.down_ctl("edge-2")
    env = Envelope.new(node="edge-2", kind="_ctl", op=Op.ACK, body={"epoch": "e1", "seqs": [1, 2]})
    payload = encode(env)
    proc = _sub(broker, f"{prefix}/#", 1, "-F", "%x")
    out = _publish_until_seen(broker, proc, topic, payload)
    raw = bytes.fromhex(out.decode().strip().splitlines()[0])
    assert raw[:1] != b"{"
    assert decode(raw) == env
