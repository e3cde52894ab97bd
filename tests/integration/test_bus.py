"""``BusClient`` against real brokers (the ``broker`` fixture: mosquitto and the embedded amqtt;
the ``clustered`` ones also on the two-node RabbitMQ cluster, with every other client on the
other node).

No mocked MQTT anywhere. Every test gets its own broker port and a unique topic prefix, and
waits on conditions with deadlines (``wait_for``, ``Event.wait``), never for a fixed time.
"Not delivered" is checked after a marker that travels a causally later path has arrived.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import NODE_USERS
from harness.brokers import Broker, Users, make_broker, mosquitto_binary
from harness.waiting import free_port, port_open, wait_for
from paho.mqtt.enums import MQTTErrorCode

from lifelong.common.bus import (
    BusClient,
    Credentials,
    PublishTicket,
    ReconnectPolicy,
    TLSParameters,
    Will,
)
from lifelong.common.codec import Codec, decode
from lifelong.common.envelope import Envelope, Op
from lifelong.common.errors import (
    BusError,
    ConnectError,
    NotConnected,
    PublishError,
    PublishTimeout,
    SubscribeError,
)

FAST = ReconnectPolicy(initial=0.1, maximum=0.5, jitter=0.1)
"""Tests do not need to wait the production half second between attempts."""
DEADLINE = 15.0


@dataclass
class Inbox:
    """A message handler that records what arrives, for waiting on."""

    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        with self.lock:
            self.messages.append((topic, payload, retained))
            self.threads.add(threading.current_thread().name)

    def payloads(self, topic: str | None = None) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if topic is None or t == topic]

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool], what: str) -> None:
        def check() -> bool:
            with self.lock:
                return predicate(list(self.messages))

        wait_for(check, timeout=DEADLINE, what=what)

    def wait_payload(self, topic: str, payload: bytes) -> None:
        self.wait_for(
            lambda ms: any(t == topic and p == payload for t, p, _ in ms), f"{payload!r} on {topic}"
        )


@pytest.fixture
def clients(broker: Broker) -> Iterator[Callable[..., BusClient]]:
    """Make started clients for ``broker``; every one is closed after the test."""
    made: list[BusClient] = []

    def make(client_id: str, *, start: bool = True, **kwargs: object) -> BusClient:
        # every other client on the cluster's other node (the same broker elsewhere)
        address = broker.url if len(made) % 2 == 0 else broker.edge_url
        options: dict[str, object] = {"address": address, "reconnect": FAST, **kwargs}
        client = BusClient(client_id=f"{client_id}-{len(made)}", **options)  # type: ignore[arg-type]
        made.append(client)
        if start:
            client.start()
        return client

    yield make
    for client in made:
        client.close(timeout=5)


def connected(client: BusClient) -> BusClient:
    assert client.wait_connected(DEADLINE), f"{client} did not connect: {client.last_error}"
    return client


# -- messages -------------------------------------------------------------------------------------
@pytest.mark.clustered
@pytest.mark.parametrize("codec", [Codec.MSGPACK, Codec.JSON])
def test_envelopes_round_trip_through_both_codecs(
    clients: Callable[..., BusClient], prefix: str, codec: Codec
) -> None:
    inbox = Inbox()
    gm = clients("gm")
    gm.subscribe(f"{prefix}/node/+/up/#", inbox)
    connected(gm)
    lc = connected(clients("lc"))
    env = Envelope.new(
        node="n1",
        kind="Dataset",
        op=Op.REPORT,
        ns="default",
        name="ds",
        seq=3,
        body={"samples": 120, "nested": {"ok": True, "ratio": 0.5}, "list": [1, "two"]},
    )
    topic = f"{prefix}/node/n1/up/Dataset/default/ds"
    lc.publish_envelope(topic, env, codec).wait(DEADLINE)
    inbox.wait_for(lambda ms: len(ms) == 1, "the envelope")
    got_topic, payload, retained = inbox.messages[0]
    assert (got_topic, retained) == (topic, False)
    assert (payload[:1] == b"{") is (codec is Codec.JSON)
    assert decode(payload) == env
    assert inbox.threads == {f"bus-{gm.client_id}"}  # handlers run on the network thread


@pytest.mark.clustered
def test_qos1_ticket_completes_on_puback(clients: Callable[..., BusClient], prefix: str) -> None:
    client = connected(clients("pub"))
    called = threading.Event()
    callback_threads: list[str] = []

    def on_done(ticket: PublishTicket) -> None:
        callback_threads.append(threading.current_thread().name)
        called.set()

    ticket = client.publish(f"{prefix}/a", b"payload", qos=1)
    ticket.add_done_callback(on_done)
    ticket.wait(DEADLINE)
    assert ticket.done and ticket.error is None
    assert called.wait(DEADLINE)
    late: list[PublishTicket] = []
    ticket.add_done_callback(late.append)  # already done: runs at once, here
    assert late == [ticket]
    stats = client.stats
    assert (stats.published, stats.acked, stats.connects, stats.reconnects) == (1, 1, 1, 0)
    # Settled either on the network thread (PUBACK after add_done_callback) or here (before).
    assert callback_threads[0] in {f"bus-{client.client_id}", threading.current_thread().name}


@pytest.mark.clustered
def test_many_threads_publish_concurrently(clients: Callable[..., BusClient], prefix: str) -> None:
    inbox = Inbox()
    sub = clients("sub")
    sub.subscribe(f"{prefix}/#", inbox)
    connected(sub)
    pub = connected(clients("pub", max_queued=0))
    tickets: list[PublishTicket] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(100):
            t = pub.publish(f"{prefix}/w{n}", f"{n}:{i}".encode())
            with lock:
                tickets.append(t)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(DEADLINE)
    for t in tickets:
        t.wait(DEADLINE)
    assert len(tickets) == 400 and all(t.done for t in tickets)
    assert len({t.mid for t in tickets}) == 400
    inbox.wait_for(lambda ms: len(ms) == 400, "all 400 messages")
    for n in range(4):  # order is kept per publishing thread (one topic each)
        assert inbox.payloads(f"{prefix}/w{n}") == [f"{n}:{i}".encode() for i in range(100)]
    assert pub.stats.acked == 400


@pytest.mark.clustered
def test_handler_may_publish_and_may_fail(clients: Callable[..., BusClient], prefix: str) -> None:
    """Handlers run on the network thread: publishing from one works, raising is contained."""
    replies = Inbox()
    echo = clients("echo")

    def handler(topic: str, payload: bytes, retained: bool) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        echo.publish(f"{prefix}/reply", payload)

    echo.subscribe(f"{prefix}/ask", handler)
    connected(echo)
    asker = clients("asker")
    asker.subscribe(f"{prefix}/reply", replies)
    connected(asker)
    asker.publish(f"{prefix}/ask", b"boom").wait(DEADLINE)
    asker.publish(f"{prefix}/ask", b"ping").wait(DEADLINE)
    replies.wait_payload(f"{prefix}/reply", b"ping")
    assert echo.stats.handler_errors == 1
    assert echo.connected


def test_full_queue_raises_publish_error_and_silence_times_out(
    broker: Broker, clients: Callable[..., BusClient], prefix: str
) -> None:
    """A frozen broker (SIGSTOP) acknowledges nothing: the client's bounded queue fills up."""
    client = connected(clients("lc", max_inflight=1, max_queued=3))
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        tickets = [client.publish(f"{prefix}/q", b"%d" % i) for i in range(3)]
        with pytest.raises(PublishError) as info:
            client.publish(f"{prefix}/q", b"one too many")
        assert info.value.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
        with pytest.raises(PublishTimeout):
            tickets[0].wait(0.2)  # the timeout itself is under test here
        assert not any(t.done for t in tickets)
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    for t in tickets:
        t.wait(DEADLINE)
    assert client.stats.acked == 3


# -- presence: will and retained ------------------------------------------------------------------
def test_will_fires_on_unclean_disconnect(clients: Callable[..., BusClient], prefix: str) -> None:
    presence = f"{prefix}/node/n1/presence"
    watcher = Inbox()
    gm = clients("gm")
    gm.subscribe(presence, watcher)
    connected(gm)
    lc = connected(clients("lc", will=Will(presence, b"offline")))
    lc.publish(presence, b"online", retain=True).wait(DEADLINE)
    watcher.wait_payload(presence, b"online")
    lc.kill()
    watcher.wait_payload(presence, b"offline")
    assert not lc.connected
    late = Inbox()  # the will was retained: a later subscriber sees the node offline
    clients("late").subscribe(presence, late)
    late.wait_for(lambda ms: ms == [(presence, b"offline", True)], "retained offline")


def test_will_does_not_fire_on_close(clients: Callable[..., BusClient], prefix: str) -> None:
    presence = f"{prefix}/node/n1/presence"
    marker = f"{prefix}/marker"
    watcher = Inbox()
    gm = clients("gm")
    gm.subscribe(f"{prefix}/#", watcher)
    connected(gm)
    lc = connected(clients("lc", will=Will(presence, b"offline-by-will")))
    lc.publish(presence, b"online", retain=True).wait(DEADLINE)
    lc.close(final=(presence, b"offline"))
    assert not lc.connected
    watcher.wait_payload(presence, b"offline")
    # The broker has processed our DISCONNECT before anything a third client sends afterwards.
    connected(clients("marker")).publish(marker, b"m").wait(DEADLINE)
    watcher.wait_payload(marker, b"m")
    assert b"offline-by-will" not in watcher.payloads(presence)
    late = Inbox()
    clients("late").subscribe(presence, late)
    late.wait_for(lambda ms: ms == [(presence, b"offline", True)], "retained final offline")


def test_retained_presence_reaches_a_later_subscriber(clients: Callable[..., BusClient], prefix: str) -> None:
    presence = f"{prefix}/gm/presence"
    gm = connected(clients("gm"))
    gm.publish(presence, b"online", retain=True).wait(DEADLINE)
    inbox = Inbox()
    lc = clients("lc")
    lc.subscribe(presence, inbox)
    inbox.wait_for(lambda ms: ms == [(presence, b"online", True)], "the retained presence")
    gm.publish(presence, b"busy", retain=True).wait(DEADLINE)  # live delivery is not "retained"
    inbox.wait_for(lambda ms: ms[-1:] == [(presence, b"busy", False)], "the live presence")


# -- outages ----------------------------------------------------------------------------------------
def test_reconnects_after_broker_restart_and_resubscribes(
    broker: Broker, clients: Callable[..., BusClient], prefix: str
) -> None:
    inbox = Inbox()
    connects: list[bool] = []
    disconnects: list[BusError | None] = []
    again = threading.Event()

    def on_connect(first: bool) -> None:
        connects.append(first)
        if not first:
            again.set()

    lc = clients("lc", on_connect=on_connect, on_disconnect=disconnects.append)
    lc.subscribe(f"{prefix}/node/n1/down/#", inbox)
    connected(lc)
    gm = connected(clients("gm"))
    gm.publish(f"{prefix}/node/n1/down/_ctl", b"before").wait(DEADLINE)
    inbox.wait_payload(f"{prefix}/node/n1/down/_ctl", b"before")

    broker.restart()  # without persistence: the broker forgot every subscription

    assert again.wait(DEADLINE), f"no reconnect: {lc.last_error}"
    assert connects == [True, False]
    assert len(disconnects) == 1 and isinstance(disconnects[0], BusError)
    connected(gm)
    wait_for(
        lambda: _try_publish(gm, f"{prefix}/node/n1/down/_ctl", b"after"),
        timeout=DEADLINE,
        what="publish after the restart",
    )
    inbox.wait_payload(f"{prefix}/node/n1/down/_ctl", b"after")  # so the filter was renewed
    assert lc.stats.reconnects == 1
    assert lc.last_error is None


def _try_publish(client: BusClient, topic: str, payload: bytes) -> bool:
    try:
        client.publish(topic, payload).wait(DEADLINE)
    except NotConnected:
        return False
    return True


def test_publish_raises_not_connected_while_broker_is_down(
    broker: Broker, clients: Callable[..., BusClient], prefix: str
) -> None:
    lost = threading.Event()
    client = clients("lc", on_disconnect=lambda error: lost.set())
    connected(client)
    broker.stop()
    assert lost.wait(DEADLINE)
    assert not client.connected
    with pytest.raises(NotConnected):
        client.publish(f"{prefix}/x", b"lost?")
    assert client.wait_connected(0) is False
    assert isinstance(client.last_error, BusError)
    broker.start()
    connected(client)
    client.publish(f"{prefix}/x", b"back").wait(DEADLINE)


def test_backoff_grows_is_capped_and_never_busy_loops(
    broker: Broker, clients: Callable[..., BusClient]
) -> None:
    policy = ReconnectPolicy(initial=0.1, maximum=0.4, jitter=0.05)
    client = connected(clients("lc", reconnect=policy))
    broker.stop()
    stamps: list[float] = []
    seen = client.stats.connect_attempts

    def record() -> bool:  # poll the attempt counter, time-stamping each new attempt
        nonlocal seen
        now = client.stats.connect_attempts
        if now != seen:
            stamps.extend([time.monotonic()] * (now - seen))
            seen = now
        return len(stamps) >= 7

    wait_for(record, timeout=DEADLINE, interval=0.005, what="7 connection attempts")
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # The session that just ended was attempt 1 of this outage; attempt n+1 follows a wait of
    # min(0.1 * 2**(n-1) + U(0, 0.05), 0.4): the gaps between the recorded attempts 2..7 are
    # 0.2-0.25, then 0.4 each. Polling blurs single time stamps, so check sums, not gaps.
    assert all(g > 0.05 for g in gaps), gaps  # a busy loop would show gaps of ~0
    assert sum(gaps) >= 0.2 + 4 * 0.4 - 0.1, gaps  # the waits really happen
    assert sum(gaps[-3:]) >= 3 * policy.maximum - 0.1, gaps  # grown up to the cap ...
    assert max(gaps) <= policy.maximum + policy.jitter + 1.0, gaps  # ... and not beyond it
    assert not client.connected


def test_close_interrupts_the_backoff(broker: Broker, clients: Callable[..., BusClient]) -> None:
    client = connected(clients("lc", reconnect=ReconnectPolicy(initial=30.0, maximum=60.0)))
    broker.stop()
    wait_for(lambda: not client.connected, timeout=DEADLINE, what="the loss")
    started = time.monotonic()
    client.close(timeout=10)
    assert time.monotonic() - started < 5  # did not sit out the 30 s wait


def test_close_settles_unconfirmed_tickets(broker: Broker, clients: Callable[..., BusClient]) -> None:
    client = connected(clients("lc"))
    broker.stop()
    wait_for(lambda: not client.connected, timeout=DEADLINE, what="the loss")
    client.close()
    with pytest.raises(NotConnected):
        client.publish("x/y", b"z")


# -- authentication and ACL (the shared acl_broker fixture: node users and the shipped ACL) --------
@pytest.mark.clustered
def test_wrong_password_is_retried_and_reported_without_the_password(
    acl_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lifelong.common.bus")
    client = BusClient(
        client_id="node-a",
        address=acl_broker.url,
        credentials=Credentials("node-a", "wrong-secret-123"),
        reconnect=ReconnectPolicy(initial=0.1, maximum=0.2, jitter=0.0),
    )
    client.start()
    try:
        wait_for(lambda: client.stats.connect_attempts >= 3, timeout=DEADLINE, what="retries")
        assert client.wait_connected(0) is False
        error = client.last_error
        assert isinstance(error, ConnectError)
        assert error.rc in (0x86, 0x87)  # bad user name or password / not authorised
        assert "node-a" in str(error)
    finally:
        client.close()
    assert "wrong-secret-123" not in caplog.text
    assert "node-a" in caplog.text


def test_refused_subscription_raises_subscribe_error(tmp_path: Path) -> None:
    """amqtt refuses another node's filter with SUBACK 0x80, which surfaces as SubscribeError.

    amqtt only: mosquitto 2.0's acl_file grants every SUBSCRIBE and filters what it delivers
    instead (test_broker_cli.py shows that neither broker delivers another node's messages).
    """
    acl_broker = make_broker("amqtt", tmp_path, acl=True, users=Users(dict(NODE_USERS)))
    acl_broker.start()
    client = BusClient(
        client_id="node-a",
        address=acl_broker.url,
        credentials=Credentials("node-a", "a-secret"),
        reconnect=FAST,
    )
    try:
        with client:
            connected(client)
            client.subscribe("lifelong/v1/node/node-a/down/#", Inbox())  # its own: granted
            with pytest.raises(SubscribeError) as info:
                client.subscribe("lifelong/v1/node/node-b/down/#", Inbox())
            assert info.value.rc == 0x80
            assert client.connected
    finally:
        acl_broker.stop()


# -- TLS (mosquitto only: the shared fixtures run plain TCP, so this file starts its own) ---------
@dataclass
class TLSBroker:
    port: int
    ca: Path
    proc: subprocess.Popen[bytes]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_mosquitto(tmp_path: Path) -> Iterator[TLSBroker]:
    """mosquitto with a TLS listener and a throw-away CA; the server certificate names only
    ``localhost`` (so ``127.0.0.1`` fails the host name check)."""
    binary = mosquitto_binary()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs the mosquitto binary and openssl")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=lifelong-test-ca",
        cwd=tmp_path,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
        cwd=tmp_path,
    )
    (tmp_path / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        cwd=tmp_path,
    )
    port = free_port()
    lines = [
        f"listener {port} 127.0.0.1",
        f"cafile {tmp_path / 'ca.crt'}",
        f"certfile {tmp_path / 'server.crt'}",
        f"keyfile {tmp_path / 'server.key'}",
        "allow_anonymous true",
        "persistence false",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # else mosquitto drops to `mosquitto` and cannot read tmp_path
    conf = tmp_path / "mosquitto-tls.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open("127.0.0.1", port), timeout=DEADLINE, what="mosquitto TLS listener")
        yield TLSBroker(port, tmp_path / "ca.crt", proc)
    finally:
        proc.terminate()
        proc.wait(10)


def _tls_client(address: str, tls: TLSParameters | None) -> BusClient:
    return BusClient(client_id=f"tls-{uuid.uuid4().hex[:6]}", address=address, tls=tls, reconnect=FAST)


def test_tls_round_trip(tls_mosquitto: TLSBroker, prefix: str) -> None:
    inbox = Inbox()
    with _tls_client(
        f"mqtts://localhost:{tls_mosquitto.port}", TLSParameters(ca_certs=tls_mosquitto.ca)
    ) as c:
        c.subscribe(f"{prefix}/#", inbox)
        connected(c)
        c.publish(f"{prefix}/secret", b"over tls").wait(DEADLINE)
        inbox.wait_payload(f"{prefix}/secret", b"over tls")


def test_tls_unknown_ca_is_a_connect_error(tls_mosquitto: TLSBroker) -> None:
    with _tls_client(f"mqtts://localhost:{tls_mosquitto.port}", None) as c:  # system CAs only
        wait_for(lambda: isinstance(c.last_error, ConnectError), timeout=DEADLINE, what="the TLS error")
        assert "certificate" in str(c.last_error).lower()
        assert not c.connected


def test_tls_host_name_is_checked_unless_insecure(tls_mosquitto: TLSBroker) -> None:
    address = f"mqtts://127.0.0.1:{tls_mosquitto.port}"  # the certificate names localhost only
    with _tls_client(address, TLSParameters(ca_certs=tls_mosquitto.ca)) as c:
        wait_for(lambda: isinstance(c.last_error, ConnectError), timeout=DEADLINE, what="the TLS error")
        assert "mismatch" in str(c.last_error) and not c.connected
    with _tls_client(address, TLSParameters(ca_certs=tls_mosquitto.ca, insecure=True)) as c:
        connected(c)
