"""The LC played with plain paho-mqtt and the codec, against a real GM on a real broker.

Who uses it: the integration tests of the GM on the bus (tests/integration/test_gm_bus.py,
test_gm_kb_bus.py). ``PahoLC`` speaks only docs/protocol.md (hello, reports, acks of downstream
messages) and records what comes down; ``make_gm`` starts an in-process ``GMService`` on the
broker with a short resend backoff; ``api`` calls its HTTP API.
"""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from harness.brokers import Broker
from lifelong.cloud.kb.base import KnowledgeBase
from lifelong.cloud.service import GMService, GMSettings
from lifelong.common.codec import decode, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.topics import Topics


class PahoLC:
    """An LC played with paho: records what comes down, sends what the test says."""

    def __init__(self, broker: Broker, prefix: str, node: str) -> None:
        self.node = node
        self.topics = Topics(prefix)
        self.received: list[Envelope] = []
        self.gm_presence: list[str] = []
        self.lock = threading.Lock()
        self.seq = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"lc-{node}-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect(broker.host, broker.edge_port)  # another node than the GM's on a cluster
        self.client.loop_start()
        assert self.subscribed.wait(10), "paho LC could not subscribe"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        # a clean session: subscribe on every (re)connect
        client.subscribe([(self.topics.node_down_filter(self.node), 1), (self.topics.gm_presence(), 1)])

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        env = decode(msg.payload)
        with self.lock:
            if msg.topic == self.topics.gm_presence():
                self.gm_presence.append((env.body or {}).get("state", ""))
            else:
                self.received.append(env)

    def envelopes(self, op: Op | None = None, kind: str | None = None) -> list[Envelope]:
        with self.lock:
            return [
                e for e in self.received if (op is None or e.op is op) and (kind is None or e.kind == kind)
            ]

    def send(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def hello(self, resources: list[dict[str, Any]] | None = None, epoch: str = "epoch-1") -> None:
        body = {"agent": "paho-lc/0", "epoch": epoch, "boot": "b", "resources": resources or [],
                "outbox": {"depth": 0, "lowSeq": None, "nextSeq": self.seq + 1}}  # fmt: skip
        env = Envelope.new(node=self.node, kind=CONTROL_KIND, op=Op.HELLO, body=body)
        self.send(self.topics.up_ctl(self.node), encode(env))

    def ack(self, envs: list[Envelope]) -> None:
        applied = [{"kind": e.kind, "ns": e.ns, "name": e.name, "rv": e.rv, "op": e.op.value} for e in envs]
        env = Envelope.new(node=self.node, kind=CONTROL_KIND, op=Op.ACK, body={"applied": applied})
        self.send(self.topics.up_ctl(self.node), encode(env))

    def report(
        self, kind: str, name: str, body: dict[str, Any], seq: int | None = None, ns: str = "default"
    ) -> int:
        if seq is None:
            self.seq += 1
            seq = self.seq
        env = Envelope.new(node=self.node, kind=kind, ns=ns, name=name, op=Op.REPORT, seq=seq, body=body)
        self.send(self.topics.up(self.node, kind, ns, name), encode(env))
        return seq

    def acked_seqs(self) -> list[int]:
        return [s for e in self.envelopes(Op.ACK) for s in (e.body or {}).get("seqs", [])]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def api(gm: GMService, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{gm.api_port}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw[:1] in (b"{", b"[") else raw


def make_gm(
    broker: Broker, prefix: str, tmp_path: Path, *, kb: KnowledgeBase | None = None, **kw: Any
) -> GMService:
    settings = GMSettings(
        broker=broker.url,
        store=f"sqlite:{tmp_path / 'gm.db'}",
        api_port=0,
        prefix=prefix,
        resend_base=0.3,
        resend_cap=1.0,
        resend_interval=0.1,
        **kw,
    )
    gm = GMService(settings, kb=kb)
    gm.start()
    assert gm.bus.wait_connected(10)
    return gm


def job_manifest(node: str = "node-a") -> dict[str, Any]:
    """The job ``job1`` of the Dataset ``ds1``, every stage's worker on ``node``."""
    tpl = {"spec": {"nodeName": node, "containers": [{"name": "w", "image": "x", "command": ["true"]}]}}
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "LifelongLearningJob",
        "metadata": {"name": "job1"},
        "spec": {
            "dataset": {"name": "ds1", "trainProb": 0.8},
            "trainSpec": {
                "template": tpl,
                "trigger": {"condition": {"operator": ">", "threshold": 1.0, "metric": "num_of_samples"}},
            },
            "evalSpec": {"template": tpl},
            "deploySpec": {"template": tpl},
            "outputDir": "/out",
        },
    }  # fmt: skip
