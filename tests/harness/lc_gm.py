"""The GM side of the bus protocol, played by LC tests with plain paho-mqtt and the codec.

``FakeGM`` speaks only what docs/protocol.md documents: it sends ``upsert``/``delete``/``ack``
/``sync`` down to one node and records what the node sends up (hello, reports, acks,
presence). It applies reports idempotently by (epoch, seq) like the real GM must, and acks
them when ``auto_ack`` is on. ``LCProcess`` runs the real ``lifelong lc`` as a subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from harness import reaper
from harness.waiting import free_port, wait_for
from lifelong.common.codec import decode, encode
from lifelong.common.envelope import Envelope, Op
from lifelong.common.topics import Topics


@dataclass
class Received:
    hellos: list[Envelope] = field(default_factory=list)
    reports: list[Envelope] = field(default_factory=list)
    acks: list[Envelope] = field(default_factory=list)
    presence: list[tuple[Envelope, bool]] = field(default_factory=list)


class FakeGM:
    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        node: str,
        *,
        auto_ack: bool = True,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.topics = Topics(prefix)
        self.node = node
        self.auto_ack = auto_ack
        self.rx = Received()
        self.applied: dict[tuple[str, int], Envelope] = {}  # (epoch, seq) -> first report
        self.duplicates = 0
        self.epoch: str | None = None
        self.lock = threading.Lock()
        self.on_report: Callable[[Envelope], None] | None = None
        self._rv = 100
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gm-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self._filters = [f"{prefix}/node/{node}/up/#", self.topics.node_presence(node)]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.reconnect_delay_set(0.2, 1)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.connected.wait(10), "fake GM could not connect"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        # Clean session: (re)subscribe on every connect, as the real GM does.
        client.subscribe([(f, 1) for f in self._filters])

    def _on_subscribe(self, *args: Any) -> None:
        self.connected.set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    # -- receiving --------------------------------------------------------------------------
    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        env = decode(msg.payload)
        assert env.node == self.node
        with self.lock:
            if msg.topic.endswith("/presence"):
                self.rx.presence.append((env, bool(msg.retain)))
            elif env.op is Op.HELLO:
                self.rx.hellos.append(env)
                self.epoch = (env.body or {}).get("epoch")
            elif env.op is Op.ACK:
                self.rx.acks.append(env)
            elif env.op is Op.REPORT:
                self.rx.reports.append(env)
                assert env.seq is not None
                key = (self.epoch or "", env.seq)
                if key in self.applied:
                    self.duplicates += 1
                else:
                    self.applied[key] = env
        if env.op is Op.REPORT and self.auto_ack:
            self.ack([env.seq or 0])
        if env.op is Op.REPORT and self.on_report is not None:
            self.on_report(env)

    # -- sending ----------------------------------------------------------------------------
    def _send(self, topic: str, env: Envelope) -> None:
        info = self.client.publish(topic, encode(env), qos=1)
        if threading.current_thread() is not self.client._thread:  # never block paho's own thread
            info.wait_for_publish(10)

    def next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def upsert(self, obj: dict[str, Any], rv: str | None = None) -> str:
        rv = rv or self.next_rv()
        meta = obj["metadata"]
        ns, name = meta.get("namespace", "default"), meta["name"]
        obj = {**obj, "metadata": {**meta, "resourceVersion": rv}}
        env = Envelope.new(
            node=self.node, kind=obj["kind"], ns=ns, name=name, op=Op.UPSERT, rv=rv, body={"object": obj}
        )
        self._send(self.topics.down(self.node, obj["kind"], ns, name), env)
        return rv

    def delete(self, kind: str, ns: str, name: str, rv: str | None = None) -> None:
        env = Envelope.new(node=self.node, kind=kind, ns=ns, name=name, op=Op.DELETE, rv=rv or self.next_rv())
        self._send(self.topics.down(self.node, kind, ns, name), env)

    def ack(self, seqs: list[int]) -> None:
        env = Envelope.new(node=self.node, kind="_ctl", op=Op.ACK, body={"epoch": self.epoch, "seqs": seqs})
        self._send(self.topics.down_ctl(self.node), env)

    def sync(self, resources: list[dict[str, str]]) -> None:
        env = Envelope.new(node=self.node, kind="_ctl", op=Op.SYNC, body={"resources": resources})
        self._send(self.topics.down_ctl(self.node), env)

    # -- queries ----------------------------------------------------------------------------
    def reports(
        self, kind: str | None = None, pred: Callable[[Envelope], bool] | None = None
    ) -> list[Envelope]:
        with self.lock:
            out = [e for e in self.applied.values() if kind is None or e.kind == kind]
        return [e for e in out if pred is None or pred(e)]

    def job_events(self, event: str, stage: str | None = None) -> list[Envelope]:
        return self.reports(
            "LifelongLearningJob",
            lambda e: (
                (e.body or {}).get("event") == event and (stage is None or e.body.get("stage") == stage)
            ),
        )

    def acked(self, kind: str, name: str, rv: str, *, since: int = 0) -> bool:
        """Has an ack (the ``since``-th received or a later one) named this version?"""
        with self.lock:
            acks = list(self.rx.acks)[since:]
        return any(
            a["kind"] == kind and a["name"] == name and a["rv"] == rv
            for env in acks
            for a in (env.body or {}).get("applied", [])
        )

    def hello_count(self) -> int:
        with self.lock:
            return len(self.rx.hellos)


class LCProcess:
    """``python -m lifelong lc`` as a child process; SIGKILL-able."""

    def __init__(
        self,
        *,
        node: str,
        broker_url: str,
        prefix: str,
        state_dir: Path,
        extra: list[str] | None = None,
        metrics: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.api_port = free_port()
        self.metrics_port = free_port() if metrics else 0
        self.args = [
            sys.executable,
            "-m",
            "lifelong",
            "--log-level",
            "DEBUG",
            "lc",
            "--node",
            node,
            "--broker",
            broker_url,
            "--prefix",
            prefix,
            "--state-dir",
            str(state_dir),
            "--worker-api-port",
            str(self.api_port),
            "--metrics-port",
            str(self.metrics_port),
            "--poll-seconds",
            "0.2",
            *(extra or []),
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"lc-{node}.log"

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_LC_")}
        self.proc = reaper.started(subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env))
        log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> str:
        """One scrape of the LC's ``/metrics`` (started with ``metrics=True``)."""
        assert self.metrics_port, "started without metrics=True"
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_started(self, gm: FakeGM, hellos_before: int, timeout: float = 20.0) -> None:
        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"lifelong lc exited with {self.proc.returncode}:\n{self.log_tail()}")
            return gm.hello_count() > hellos_before

        wait_for(up, timeout=timeout, what="the LC's hello")
