"""Many simulated edge nodes in one process: paho clients driven by one network thread.

Each simulated node is a paho-mqtt client (clean session, client id = node name) whose socket
sits in one ``selectors`` loop; paho's ``loop_read``/``loop_write``/``loop_misc`` are called
from that loop (paho's external event-loop mode), so 1,000 MQTT sessions cost one thread.

``mode="lifelong"`` speaks the real protocol (docs/protocol.md) as an LC would, minus the
outbox (a simulated node reports nothing): on every (re)connect it subscribes to its
``down/#`` and the GM's presence, publishes retained presence and a ``hello`` naming what it
holds (and a fresh hello whenever the GM's presence turns online while it stays connected,
and again when no ``sync`` answers a hello within ``HELLO_RETRY`` seconds, doubling up to
``HELLO_RETRY_CAP``, as the LC does); it stores
``upsert``/``delete`` (stale versions ignored), acknowledges each with an ``ack`` on
``up/_ctl``, and on ``sync`` drops what the list does not name. It is *in sync* once a sync
arrived after its latest hello and it holds everything that sync names, at that version or newer.

``mode="raw"`` is the reference: a plain client that subscribes to ``bench/rawsim/{node}``
on every connect and counts what it receives.

Reconnects follow the LC's policy: the n-th attempt of an outage waits
``min(0.5 * 2**(n-1), 30)`` seconds plus up to 1 s at random; the waits are tenacity's
(``lifelong.common.backoff``), as the LC's and the GM's are.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import selectors
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.infra import HOST, PREFIX
from lifelong.common.backoff import exponential, exponential_jitter, wait_seconds
from lifelong.common.codec import decode, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.topics import Topics
from lifelong.edge.session import HELLO_RETRY, HELLO_RETRY_CAP

AGENT = "lifelong-sim/0.1.0"
RECONNECT_WAIT = exponential_jitter(0.5, 30.0, 1.0)
HELLO_WAIT = exponential(HELLO_RETRY, HELLO_RETRY_CAP)
Key = tuple[str, str, str]


def _newer(a: str, b: str | None) -> bool:
    if b is None:
        return True
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return a != b


@dataclass
class SimNode:
    name: str
    client: mqtt.Client
    epoch: str = field(default_factory=lambda: secrets.token_hex(8))
    boot: str = field(default_factory=lambda: secrets.token_hex(8))
    held: dict[Key, str] = field(default_factory=dict)
    sync_list: dict[Key, str] | None = None  # the last sync since the latest hello
    connected: bool = False
    next_attempt: float = 0.0
    attempts: int = 0
    sock: Any = None
    started: bool = False
    gm_presence_id: str | None = None
    gm_state: str | None = None
    hellos: int = 0
    hello_retries: int = 0
    hello_due: float | None = None  # say hello again then, unless a sync arrived
    hello_attempt: int = 1  # hellos sent since the last sync (or connect), the last one included
    subscribed: int = 0  # raw mode: SUBACKs received
    received: int = 0  # raw mode: messages received
    last_rx: float = 0.0

    def in_sync(self) -> bool:
        if self.sync_list is None:
            return False
        return all(k in self.held and not _newer(rv, self.held[k]) for k, rv in self.sync_list.items())


class Simulator:
    def __init__(
        self, port: int, count: int, *, mode: str = "lifelong", label: str = "sim", max_pending: int = 200
    ) -> None:
        self.port = port
        self.max_pending = max_pending
        """Connections begun and not yet answered (CONNACK) at most: a broker's listen backlog
        (mosquitto's is 100) drops SYNs beyond it, and a dropped SYN is retried by the kernel
        only after 1, 3, 7... s, which stalls this thread's blocking ``connect``."""
        self.mode = mode
        self.topics = Topics(PREFIX)
        self.sel = selectors.DefaultSelector()
        self.nodes: list[SimNode] = []
        self._stop = threading.Event()
        self.errors = 0
        self.acks_sent = 0
        for i in range(count):
            name = f"{label}-{i:04d}"
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, clean_session=True)
            client.max_inflight_messages_set(100)
            node = SimNode(name, client)
            client.user_data_set(node)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            client.on_subscribe = self._on_subscribe
            if mode == "lifelong":
                presence = Envelope.new(
                    node=name, kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": "offline", "agent": AGENT}
                )
                client.will_set(self.topics.node_presence(name), encode(presence), qos=1, retain=True)
            self.nodes.append(node)
        self._thread = threading.Thread(target=self._run, name=f"sim-{label}", daemon=True)

    # -- queries (any thread; reads of simple attributes) ------------------------------------------
    def connected(self) -> int:
        return sum(1 for n in self.nodes if n.connected)

    def synced(self) -> int:
        return sum(1 for n in self.nodes if n.connected and n.in_sync())

    def holding(self, kind: str) -> int:
        """Nodes holding at least one resource of ``kind``."""
        return sum(1 for n in self.nodes if any(k[0] == kind for k in list(n.held)))

    def subscribed(self, at_least: int = 1) -> int:
        return sum(1 for n in self.nodes if n.connected and n.subscribed >= at_least)

    def received(self) -> int:
        return sum(1 for n in self.nodes if n.received > 0)

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for node in self.nodes:
            try:
                if node.connected:
                    node.client.disconnect()
                    node.client.loop_write()
            except Exception:
                pass
            self._close(node)

    def _close(self, node: SimNode) -> None:
        if node.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(node.sock)
            node.sock = None
        node.connected = False

    def _schedule(self, node: SimNode) -> None:
        node.attempts += 1
        wait = wait_seconds(RECONNECT_WAIT, node.attempts)
        node.next_attempt = time.monotonic() + wait

    def _connect(self, node: SimNode) -> None:
        try:
            if not node.started:
                node.started = True
                node.client.connect(HOST, self.port, keepalive=60)
            else:
                node.client.reconnect()
        except OSError:
            self.errors += 1
            self._schedule(node)
            return
        node.next_attempt = float("inf")  # waiting for CONNACK or a loss
        sock = node.client.socket()
        if sock is not None:
            node.sock = sock
            self.sel.register(sock, selectors.EVENT_READ, node)

    def _run(self) -> None:
        last_misc = 0.0
        # Begin at most max_pending connections at a time (see __init__).
        while not self._stop.is_set():
            now = time.monotonic()
            pending = sum(1 for node in self.nodes if node.sock is not None and not node.connected)
            for node in self.nodes:
                if pending >= self.max_pending:
                    break
                if node.sock is None and node.next_attempt <= now:
                    self._connect(node)
                    pending += 1
            for key, _ev in self.sel.select(0.01):
                node = key.data
                rc = node.client.loop_read(100)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    self._lost(node)
            for node in self.nodes:
                if (
                    node.sock is not None
                    and node.client.want_write()
                    and node.client.loop_write() != mqtt.MQTT_ERR_SUCCESS
                ):
                    self._lost(node)
            if now - last_misc > 1.0:
                last_misc = now
                for node in self.nodes:
                    if node.sock is not None and node.client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                        self._lost(node)
                    elif node.connected and node.hello_due is not None and now >= node.hello_due:
                        if node.gm_state == "offline":
                            node.hello_due = None  # the GM's presence turning online brings one
                        else:
                            node.hello_retries += 1
                            self._hello(node.client, node, retry=True)

    def _lost(self, node: SimNode) -> None:
        if node.sock is None:
            return
        self._close(node)
        if node.attempts == 0:
            node.next_attempt = time.monotonic()  # the first attempt after a connection: at once
        else:
            self._schedule(node)

    # -- paho callbacks (on the simulator thread) ---------------------------------------------------
    def _on_connect(self, client: mqtt.Client, node: SimNode, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self._lost(node)
            return
        node.connected = True
        node.attempts = 0
        if self.mode == "raw":
            client.subscribe(f"bench/rawsim/{node.name}", 1)
            return
        client.subscribe([(self.topics.node_down_filter(node.name), 1), (self.topics.gm_presence(), 1)])
        presence = Envelope.new(
            node=node.name, kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": "online", "agent": AGENT}
        )
        client.publish(self.topics.node_presence(node.name), encode(presence), qos=1, retain=True)
        self._hello(client, node)

    def _hello(self, client: mqtt.Client, node: SimNode, retry: bool = False) -> None:
        node.sync_list = None
        node.hello_attempt = node.hello_attempt + 1 if retry else 1
        node.hello_due = time.monotonic() + wait_seconds(HELLO_WAIT, node.hello_attempt)
        body = {
            "agent": AGENT,
            "epoch": node.epoch,
            "boot": node.boot,
            "resources": [{"kind": k, "ns": n, "name": x, "rv": rv} for (k, n, x), rv in node.held.items()],
            "outbox": {"depth": 0, "lowSeq": None, "nextSeq": 1},
        }
        hello = Envelope.new(node=node.name, kind=CONTROL_KIND, op=Op.HELLO, body=body)
        client.publish(self.topics.up_ctl(node.name), encode(hello), qos=1)
        node.hellos += 1

    def _on_subscribe(self, client: mqtt.Client, node: SimNode, *args: Any) -> None:
        node.subscribed += 1

    def _on_disconnect(self, client: mqtt.Client, node: SimNode, *args: Any) -> None:
        self._lost(node)

    def _on_message(self, client: mqtt.Client, node: SimNode, msg: Any) -> None:
        node.last_rx = time.monotonic()
        if self.mode == "raw":
            node.received += 1
            return
        try:
            env = decode(msg.payload)
        except Exception:
            self.errors += 1
            return
        if msg.topic == self.topics.gm_presence():
            # As the LC: a GM presence turning online (a new id) while connected asks for a
            # fresh hello; the first one seen, when retained, was answered by our connect's hello.
            first, new = node.gm_presence_id is None, env.id != node.gm_presence_id
            node.gm_presence_id = env.id
            state = (env.body or {}).get("state")
            node.gm_state = state if isinstance(state, str) else None
            if state == "online" and new and not (first and msg.retain):
                self._hello(client, node)
            return
        if env.op is Op.SYNC:
            wanted: dict[Key, str] = {}
            for item in (env.body or {}).get("resources") or []:
                wanted[(item["kind"], item["ns"], item["name"])] = str(item.get("rv", ""))
            for key in list(node.held):
                if key not in wanted:
                    del node.held[key]
            node.sync_list = wanted
            node.hello_due = None
            return
        if env.op not in (Op.UPSERT, Op.DELETE) or env.rv is None:
            return
        key = env.key
        if env.op is Op.UPSERT:
            if _newer(env.rv, node.held.get(key)):
                node.held[key] = env.rv
        elif key in node.held and not _newer(node.held[key], env.rv):
            del node.held[key]
        if node.sync_list is not None and env.op is Op.UPSERT:
            node.sync_list.setdefault(key, env.rv)
        applied = [{"kind": key[0], "ns": key[1], "name": key[2], "rv": env.rv, "op": env.op.value}]
        ack = Envelope.new(node=node.name, kind=CONTROL_KIND, op=Op.ACK, body={"applied": applied})
        client.publish(self.topics.up_ctl(node.name), encode(ack), qos=1)
        self.acks_sent += 1


def fanout_client(port: int) -> mqtt.Client:
    """A raw paho client (its own network thread) to send one message to each raw node.

    Create it before the simulators: paho's threaded loop uses ``select()``, which cannot
    watch a socket numbered above 1024, and thousands of simulated sessions take those numbers.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-fanout-{time.time_ns()}")
    client.max_inflight_messages_set(200)
    done = threading.Event()
    client.on_connect = lambda *a: done.set()
    client.connect(HOST, port)
    client.loop_start()
    if not done.wait(15):
        raise RuntimeError("the raw fan-out client could not connect")
    return client


def fanout(client: mqtt.Client, names: list[str], size: int) -> None:
    """One QoS 1 message of ``size`` bytes to each raw node named."""
    payload = random.randbytes(size)
    for name in names:
        client.publish(f"bench/rawsim/{name}", payload, qos=1)
