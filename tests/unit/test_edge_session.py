"""The LC session's hello retry (``lifelong.edge.session``) without a broker: a hello no
``sync`` answers is sent again with a doubling wait; a sync, or a GM known to be offline,
ends the retries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.waiting import wait_for

from lifelong.common.codec import Codec, decode, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.topics import Topics
from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox
from lifelong.edge.session import Session

NODE = "node-a"
TOPICS = Topics("lifelong")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Envelope]] = []

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.sent.append((topic, decode(payload)))

    def hellos(self) -> int:
        return sum(1 for _, env in list(self.sent) if env.op is Op.HELLO)


def gm_says(op: Op, body: dict[str, object]) -> bytes:
    return encode(Envelope.new(node="gm" if op is Op.PRESENCE else NODE, kind=CONTROL_KIND, op=op, body=body))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "lc.db", sync="normal")
    yield s
    s.close()


def make(store: Store, wire: Wire, **kw: object) -> Session:
    s = Session(store, Outbox(store), node=NODE, topics=TOPICS, codec=Codec.MSGPACK, max_payload=65536, **kw)  # type: ignore[arg-type]
    s.publish = wire
    return s


def test_an_unanswered_hello_is_sent_again_with_a_doubling_wait_until_a_sync(store: Store) -> None:
    clock, wire = Clock(), Wire()
    s = make(store, wire, hello_retry=10.0, hello_retry_cap=25.0, clock=clock)
    s._on_connected(True)
    assert wire.hellos() == 1
    for advance, hellos in ((9.9, 1), (0.2, 2), (19.8, 2), (0.3, 3), (24.9, 3), (0.2, 4), (25.1, 5)):
        clock.now += advance
        s._retry_hello()
        assert wire.hellos() == hellos, f"after +{advance}s"
    assert s.hello_retries == 4
    s._on_down(TOPICS.down_ctl(NODE), gm_says(Op.SYNC, {"resources": []}), [])
    clock.now += 1000
    s._retry_hello()
    assert wire.hellos() == 5  # answered: no more
    # a later hello (a reconnect) waits the first interval again
    s._on_connected(False)
    clock.now += 10.1
    s._retry_hello()
    assert wire.hellos() == 7


def test_no_retry_while_the_gm_is_known_to_be_offline(store: Store) -> None:
    clock, wire = Clock(), Wire()
    s = make(store, wire, hello_retry=10.0, clock=clock)
    s._on_connected(True)
    s._on_gm_presence(gm_says(Op.PRESENCE, {"state": "offline", "agent": "gm"}), False)
    clock.now += 500
    s._retry_hello()
    assert wire.hellos() == 1
    # its presence turning online brings the fresh hello, and retries resume from it
    s._on_gm_presence(gm_says(Op.PRESENCE, {"state": "online", "agent": "gm"}), False)
    assert wire.hellos() == 2
    clock.now += 10.1
    s._retry_hello()
    assert wire.hellos() == 3


def test_the_session_thread_wakes_for_a_retry_by_itself(store: Store) -> None:
    wire = Wire()
    s = make(store, wire, hello_retry=0.05, hello_retry_cap=0.1)
    s.start()
    try:
        s.handle_connect(True)
        wait_for(lambda: wire.hellos() >= 4, what="three retried hellos")
        assert s.hello_retries >= 3
    finally:
        s.stop()
