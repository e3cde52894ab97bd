"""What a clustered broker does with retained messages, and the protocol correct in spite of it.

Runs on the two-node RabbitMQ cluster only (``rabbit_cluster``, ``harness/rabbitmq.py``): that is
what is under test. RabbitMQ 3.10's MQTT plugin keeps retained messages per node and sends them
only to subscriptions without wildcards; these tests pin both facts down, so that a RabbitMQ that
changed either would be noticed, and show that the LC does not stall on a stale retained GM
``offline`` left on its node (docs/protocol.md, "What the protocol needs of the broker").
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from harness.lc_gm import FakeGM, LCProcess
from harness.rabbitmq import RabbitCluster, lc_password_args
from harness.waiting import wait_for
from paho.mqtt.enums import CallbackAPIVersion

from lifelong.common.codec import encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.topics import Topics


class Client:
    """A plain anonymous paho client on one port that records (topic, payload, retained)."""

    def __init__(self, port: int, user: tuple[str, str] | None = None) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.codes: list[int] = []
        self.disconnects = 0
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_disconnect = self._on_disconnect
        if user is not None:
            self.c.username_pw_set(*user)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, codes: Any, props: Any = None) -> None:
        self.codes = [c.value for c in codes]
        self.subscribed.set()

    def _on_disconnect(self, *args: Any) -> None:
        self.disconnects += 1

    def subscribe_codes(self, *filters: str) -> list[int]:
        """SUBSCRIBE and return the SUBACK's return codes (128: refused)."""
        self.subscribed.clear()
        self.c.subscribe([(f, 1) for f in filters])
        assert self.subscribed.wait(10), "no SUBACK"
        return self.codes

    def messages(self) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return list(self.got)

    def subscribe(self, *filters: str) -> None:
        assert all(c < 128 for c in self.subscribe_codes(*filters)), f"refused: {filters}"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def cluster(rabbit_cluster: RabbitCluster) -> Iterator[RabbitCluster]:
    yield rabbit_cluster
    rabbit_cluster.purge()


def test_retained_messages_stay_on_their_node_and_skip_wildcards(cluster: RabbitCluster, prefix: str) -> None:
    topic = f"{prefix}/node/node-a/presence"
    pub = Client(cluster.edge_port)
    readers: list[Client] = []
    try:
        pub.publish(topic, b"online", retain=True)
        exact_here, exact_there, wild_here = (
            Client(cluster.edge_port),
            Client(cluster.port),
            Client(cluster.edge_port),
        )
        readers += [exact_here, exact_there, wild_here]
        exact_here.subscribe(topic)
        wait_for(
            lambda: exact_here.messages() == [(topic, b"online", True)], what="the retained copy on its node"
        )
        exact_there.subscribe(topic)
        wild_here.subscribe(f"{prefix}/node/+/presence", f"{prefix}/#")
        # A live message published after both subscriptions arrives: anything retained would have
        # come first (a broker sends retained copies before later messages on the subscription).
        pub.publish(topic, b"marker")
        for reader in (exact_there, wild_here):
            wait_for(lambda r=reader: (topic, b"marker", False) in r.messages(), what="the live marker")
        assert exact_there.messages() == [(topic, b"marker", False)]  # other node: no retained copy
        # wildcards: no retained copy (and the overlapping filters share one queue: one copy)
        assert wild_here.messages() == [(topic, b"marker", False)]
    finally:
        for c in (pub, *readers):
            c.close()


def test_a_stale_retained_gm_offline_on_the_lcs_node_does_not_stop_its_hellos(
    cluster: RabbitCluster, prefix: str, tmp_path: Path
) -> None:
    """A GM that was connected to node 2 died: its will left a retained ``offline`` there. Its
    successor runs on node 1 (here the test's FakeGM, which does not answer the first hello, as
    if it or its ``sync`` were lost). The LC on node 2 gets the stale ``offline`` when it
    subscribes, and must still say hello again."""
    topics = Topics(prefix)
    dead_gm = Client(cluster.edge_port)
    offline = Envelope.new(
        node="gm", kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": "offline", "agent": "lifelong-gm/old"}
    )
    dead_gm.publish(topics.gm_presence(), encode(offline), retain=True)
    dead_gm.close()
    gm = FakeGM(cluster.host, cluster.port, prefix, "node-a")
    lc = LCProcess(
        node="node-a",
        broker_url=cluster.edge_url,
        prefix=prefix,
        state_dir=tmp_path / "state",
        extra=lc_password_args(cluster, "node-a", tmp_path),
    )
    lc.start()
    try:
        lc.wait_started(gm, 0)
        # the first retry comes after 10 s (HELLO_RETRY, edge/session.py)
        wait_for(lambda: gm.hello_count() >= 2, timeout=25, what=f"a second hello:\n{lc.log_tail()}")
    finally:
        lc.kill()
        gm.close()


def test_topic_permissions_keep_a_node_off_its_down_topics_and_other_nodes(
    cluster: RabbitCluster, prefix: str
) -> None:
    """The shipped ACL as topic permissions: node-a may not read node-b's down topics (RabbitMQ
    3.10 answers such a SUBSCRIBE by closing the connection, not with a refusing SUBACK), and its
    publish on its own down topic (only the GM commands a node) never reaches a subscriber."""
    topics = Topics(prefix)
    gm = Client(cluster.port, ("gm", cluster.users["gm"]))
    node_a = Client(cluster.edge_port, ("node-a", cluster.users["node-a"]))
    forger = Client(cluster.edge_port, ("node-a", cluster.users["node-a"]))
    try:
        gm.subscribe(f"{prefix}/node/node-a/down/#")
        node_a.subscribe(topics.down_ctl("node-a"))  # its own: granted
        node_a.c.subscribe(topics.down_ctl("node-b"), 1)
        wait_for(lambda: node_a.disconnects > 0, what="node-a dropped for reading node-b's topic")
        forger.c.publish(topics.down_ctl("node-a"), b"forged", qos=1)
        gm.publish(topics.down_ctl("node-a"), b"marker")  # the GM may write there
        wait_for(lambda: (topics.down_ctl("node-a"), b"marker", False) in gm.messages(), what="the marker")
        assert b"forged" not in [p for _, p, _ in gm.messages()]
    finally:
        for c in (gm, node_a, forger):
            c.close()


def test_purge_ends_every_session_a_test_left_on_either_node(cluster: RabbitCluster, prefix: str) -> None:
    """What the fixture's purge is for: a client id used again by the next test starts with no
    session, no subscription and no queued message, on the node that held them as well."""
    topic, marker = f"{prefix}/node/node-a/down/x", f"{prefix}/node/node-a/down/marker"
    cid = f"purge-{uuid.uuid4().hex[:8]}"
    got: list[str] = []
    present: list[bool] = []
    connected, subscribed = threading.Event(), threading.Event()

    def on_connect(_c: Any, _u: Any, flags: Any, _rc: Any, _p: Any = None) -> None:
        present.append(bool(flags.session_present))
        connected.set()

    def session() -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
        c.on_connect = on_connect
        c.on_subscribe = lambda *_a: subscribed.set()
        c.on_message = lambda _c, _u, msg: got.append(msg.topic)
        connected.clear()
        c.connect("127.0.0.1", cluster.edge_port)  # node 2: the LCs' node
        c.loop_start()
        assert connected.wait(10), "no CONNACK"
        return c

    def subscribe(c: mqtt.Client, filt: str) -> None:
        subscribed.clear()
        c.subscribe(filt, qos=1)
        assert subscribed.wait(10), "no SUBACK"

    def publish(t: str) -> None:
        pub = Client(cluster.port)  # node 1: the message crosses the cluster
        try:
            pub.publish(t, t.encode())
        finally:
            pub.close()

    first = session()
    subscribe(first, topic)
    first.disconnect()
    first.loop_stop()
    publish(topic)  # queued for the session while it is away

    cluster.purge()

    again = session()
    try:
        assert present == [False, False]  # the session is gone, not resumed
        subscribe(again, marker)
        publish(topic)  # the old subscription, had it survived, would take this
        publish(marker)  # delivered after anything queued before it
        wait_for(lambda: marker in got, what="the marker")
        assert got == [marker], got
    finally:
        again.disconnect()
        again.loop_stop()
