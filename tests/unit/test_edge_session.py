"""The LC session (``lifelong.edge.session``) without a broker, driven through its public seams
(``handle_*`` enqueue as the bus client's network thread does, ``run_pending`` runs the session
thread's step; the wire, the clock and the store are constructor arguments):

* a hello no ``sync`` answers is sent again with a doubling wait; a sync, or a GM known to be
  offline, ends the retries;
* what arrives is parsed into its model before it is stored: an object the models refuse is
  never stored, is counted and logged with its key, and is acknowledged with the reason, while
  the others of the same batch still apply; one bad item of a ``sync`` or an ``ack`` is
  skipped, the rest still apply."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
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
    return Session(
        store,
        Outbox(store),
        node=NODE,
        topics=TOPICS,
        codec=Codec.MSGPACK,
        max_payload=65536,
        publish=wire,
        **kw,  # type: ignore[arg-type]
    )


def connect(s: Session) -> None:
    s.handle_connect(True)
    s.run_pending()


def down(s: Session, topic: str, *payloads: bytes) -> None:
    """Messages as the network thread hands them over, then one session step (one batch)."""
    for payload in payloads:
        s.handle_message(topic, payload)
    s.run_pending()


def gm_presence(s: Session, payload: bytes) -> None:
    s.handle_gm_presence(TOPICS.gm_presence(), payload, False)
    s.run_pending()


def test_an_unanswered_hello_is_sent_again_with_a_doubling_wait_until_a_sync(store: Store) -> None:
    clock, wire = Clock(), Wire()
    s = make(store, wire, hello_retry=10.0, hello_retry_cap=25.0, clock=clock)
    connect(s)
    assert wire.hellos() == 1
    for advance, hellos in ((9.9, 1), (0.2, 2), (19.8, 2), (0.3, 3), (24.9, 3), (0.2, 4), (25.1, 5)):
        clock.now += advance
        s.run_pending()
        assert wire.hellos() == hellos, f"after +{advance}s"
    assert s.hello_retries == 4
    down(s, TOPICS.down_ctl(NODE), gm_says(Op.SYNC, {"resources": []}))
    clock.now += 1000
    s.run_pending()
    assert wire.hellos() == 5  # answered: no more
    # a later hello (a reconnect) waits the first interval again
    s.handle_connect(False)
    s.run_pending()
    clock.now += 10.1
    s.run_pending()
    assert wire.hellos() == 7


def test_no_retry_while_the_gm_is_known_to_be_offline(store: Store) -> None:
    clock, wire = Clock(), Wire()
    s = make(store, wire, hello_retry=10.0, clock=clock)
    connect(s)
    gm_presence(s, gm_says(Op.PRESENCE, {"state": "offline", "agent": "gm"}))
    clock.now += 500
    s.run_pending()
    assert wire.hellos() == 1
    # its presence turning online brings the fresh hello, and retries resume from it
    gm_presence(s, gm_says(Op.PRESENCE, {"state": "online", "agent": "gm"}))
    assert wire.hellos() == 2
    clock.now += 10.1
    s.run_pending()
    assert wire.hellos() == 3


def test_a_retained_offline_does_not_stop_the_retries(store: Store) -> None:
    """A clustered broker keeps retained messages per node: the GM's ``offline`` the LC's node
    hands out may be a dead GM's while its successor, on another node, is up. Only a live
    ``offline`` says the GM is gone now."""
    clock, wire = Clock(), Wire()
    s = make(store, wire, hello_retry=10.0, clock=clock)
    connect(s)
    s.handle_gm_presence(
        TOPICS.gm_presence(), gm_says(Op.PRESENCE, {"state": "offline", "agent": "gm"}), True
    )
    s.run_pending()
    clock.now += 10.1
    s.run_pending()
    assert wire.hellos() == 2


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


# -- parsing at the boundary ------------------------------------------------------------------------


def dataset(name: str, url: object = "/data/x.csv") -> dict[str, object]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"url": url, "format": "csv", "nodeName": NODE},
    }


def upsert(obj: dict[str, object], rv: str, *, name: str | None = None) -> tuple[str, bytes]:
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    kind, ns, name = str(obj["kind"]), str(meta["namespace"]), name or str(meta["name"])
    env = Envelope.new(node=NODE, kind=kind, ns=ns, name=name, op=Op.UPSERT, rv=rv, body={"object": obj})
    return TOPICS.down(NODE, kind, ns, name), encode(env)


def acks(wire: Wire) -> list[dict[str, object]]:
    return [item for _, env in wire.sent if env.op is Op.ACK for item in (env.body or {})["applied"]]


def test_an_object_the_models_refuse_is_never_stored_and_the_rest_of_its_batch_applies(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    wire = Wire()
    s = make(store, wire)
    connect(s)
    topic, good_v1 = upsert(dataset("ds-a"), "1")
    down(s, topic, good_v1)
    bad = upsert(dataset("ds-a", url=123), "2")  # a newer version of a held dataset
    new_bad = upsert(dataset("ds-b", url=123), "3")  # the bug: this was stored
    good = upsert(dataset("ds-c"), "4")
    with caplog.at_level(logging.WARNING, logger="lifelong.edge"):
        for t, payload in (bad, new_bad, good):
            s.handle_message(t, payload)
        s.run_pending()
    held = store.get_resource("Dataset", "default", "ds-a")
    assert held is not None and held[0] == "1" and held[1]["spec"]["url"] == "/data/x.csv"  # kept as was
    assert store.get_resource("Dataset", "default", "ds-b") is None
    assert store.get_resource("Dataset", "default", "ds-c") is not None
    assert s.rejected == {"invalid": 2}
    assert s.downstream == {"applied": 2, "stale": 0, "invalid": 2}
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2 and "Dataset default/ds-b" in refusals[1], refusals
    assert "object.spec.url: Input should be a valid string" in refusals[1]
    # every message is acknowledged, the refused ones saying why, so the GM stops resending them
    sent = {(a["name"], a["rv"]): a.get("refused") for a in acks(wire)}
    assert set(sent) == {("ds-a", "1"), ("ds-a", "2"), ("ds-b", "3"), ("ds-c", "4")}
    assert sent[("ds-c", "4")] is None and "spec.url" in str(sent[("ds-b", "3")])


def test_an_object_that_is_not_the_one_its_topic_names_is_refused(store: Store) -> None:
    wire = Wire()
    s = make(store, wire)
    topic, payload = upsert(dataset("ds-a"), "5", name="ds-other")
    down(s, topic, payload)
    assert store.get_resource("Dataset", "default", "ds-other") is None
    assert store.get_resource("Dataset", "default", "ds-a") is None
    assert s.rejected == {"invalid": 1}
    assert "Dataset/default/ds-a" in str(acks(wire)[0]["refused"])


def test_a_sync_item_of_the_wrong_type_is_skipped_and_the_rest_of_the_sync_applies(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    wire, clock = Wire(), Clock()
    s = make(store, wire, clock=clock)
    connect(s)
    for name, rv in (("keep", "1"), ("drop", "2"), ("maybe", "3")):
        down(s, *upsert(dataset(name), rv))
    items: list[object] = [
        {"kind": "Dataset", "ns": "default", "name": "keep", "rv": "1"},
        {"kind": [], "ns": "default", "name": "maybe", "rv": "3"},  # the bug: TypeError
    ]
    with caplog.at_level(logging.WARNING, logger="lifelong.edge"):
        down(s, TOPICS.down_ctl(NODE), gm_says(Op.SYNC, {"resources": items}))
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert store.get_resource("Dataset", "default", "keep") is not None
    assert store.get_resource("Dataset", "default", "drop") is None
    # the refused item may have named it: kept until a sync says otherwise
    assert store.get_resource("Dataset", "default", "maybe") is not None
    assert s.rejected == {"invalid": 1}
    assert "resources[1].kind: Input should be a valid string" in caplog.text
    clock.now += 1000
    s.run_pending()
    assert wire.hellos() == 1  # the sync answered the hello


def test_a_sync_whose_body_is_refused_changes_nothing_and_the_hello_is_retried(store: Store) -> None:
    wire, clock = Wire(), Clock()
    s = make(store, wire, clock=clock, hello_retry=10.0)
    connect(s)
    down(s, *upsert(dataset("ds-a"), "1"))
    down(s, TOPICS.down_ctl(NODE), gm_says(Op.SYNC, {"resources": "everything"}))
    assert store.get_resource("Dataset", "default", "ds-a") is not None
    assert s.rejected == {"invalid": 1}
    clock.now += 10.1
    s.run_pending()
    assert wire.hellos() == 2


def test_an_ack_with_one_bad_seq_still_deletes_the_others(store: Store) -> None:
    wire = Wire()
    s = make(store, wire)
    seqs = [s.outbox.append("Dataset", "default", f"d{i}", {"numberOfSamples": i}) for i in range(3)]
    assert None not in seqs
    down(
        s, TOPICS.down_ctl(NODE), gm_says(Op.ACK, {"epoch": s.outbox.epoch, "seqs": [seqs[0], "x", seqs[2]]})
    )
    assert s.outbox.depth() == 1
    assert s.rejected == {"invalid": 1}


def test_the_hello_is_built_by_its_model_with_what_the_node_holds(store: Store) -> None:
    wire = Wire()
    s = make(store, wire)
    down(s, *upsert(dataset("ds-a"), "7"))
    connect(s)
    hello = next(env for _, env in wire.sent if env.op is Op.HELLO)
    # the part fields always: a whole hello is part 0 of 1 (the GM then knows syncs in parts are read)
    assert list(hello.body or {}) == [
        "agent",
        "epoch",
        "boot",
        "resources",
        "outbox",
        "helloId",
        "part",
        "parts",
    ]
    assert (hello.body or {})["part"] == 0 and (hello.body or {})["parts"] == 1
    assert (hello.body or {})["resources"] == [
        {"kind": "Dataset", "ns": "default", "name": "ds-a", "rv": "7"}
    ]
    assert (hello.body or {})["outbox"] == {"depth": 0, "lowSeq": None, "nextSeq": 1}


def test_many_refused_items_are_all_counted_and_logged_in_a_bounded_number_of_lines(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    s = make(store, Wire())
    with caplog.at_level(logging.WARNING, logger="lifelong.edge"):
        down(s, TOPICS.down_ctl(NODE), gm_says(Op.ACK, {"epoch": s.outbox.epoch, "seqs": ["x"] * 500}))
    assert s.rejected == {"invalid": 500}
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 < len(lines) <= 11, len(lines)
    assert "490 more items refused" in lines[-1].getMessage()


def test_a_batch_of_acks_alone_commits_lazily_and_one_that_stores_does_not(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forgetting acknowledged reports need not wait for the disk (lost, they are resent and
    found applied); a batch that stores something the GM is told of must."""
    seen: list[bool] = []
    real = store.tx

    def spy(*, lazy: bool = False) -> AbstractContextManager[object]:
        seen.append(lazy)
        return real(lazy=lazy)

    monkeypatch.setattr(store, "tx", spy)
    s = make(store, Wire())
    seqs = [s.outbox.append("Dataset", "default", f"d{i}", {"numberOfSamples": i}) for i in range(3)]
    seen.clear()
    down(s, TOPICS.down_ctl(NODE), gm_says(Op.ACK, {"epoch": s.outbox.epoch, "seqs": seqs[:2]}))
    assert s.outbox.depth() == 1 and seen[0] is True
    topic, payload = upsert(dataset("ds-a"), "1")
    s.handle_message(TOPICS.down_ctl(NODE), gm_says(Op.ACK, {"epoch": s.outbox.epoch, "seqs": seqs[2:]}))
    seen.clear()
    down(s, topic, payload)  # one batch: the ack and an upsert
    assert s.outbox.depth() == 0 and store.get_resource("Dataset", "default", "ds-a") is not None
    assert seen[0] is False  # durable: the upsert is acknowledged to the GM once stored
