"""Hellos and syncs in parts (docs/protocol.md, ``hello`` and ``sync``), without a broker: the part
fields of the models, the splitting by the payload limit, the gathering of parts, the LC's
session saying hello in parts and applying a sync only once it has every part, and the GM's
gathering of a node's hello parts (its bounds and timeout).

The integration tests on both brokers are in tests/integration/test_hello_parts.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lifelong.common.codec import Codec, decode, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.errors import InvalidBody, PayloadTooLarge
from lifelong.common.messages import MAX_PARTS, Hello, PartGatherer, PartRefused, Sync, split_to_fit
from lifelong.common.topics import Topics
from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox
from lifelong.edge.session import Session

NODE = "node-a"
TOPICS = Topics("lifelong")
LIMIT = 16 * 1024


def ref(name: str, rv: str = "1") -> dict[str, str]:
    return {"kind": "Dataset", "ns": "default", "name": name, "rv": rv}


# -- models ----------------------------------------------------------------------------------------


def test_a_body_without_part_fields_is_whole_and_serialises_without_them() -> None:
    hello = Hello.parse({"epoch": "e", "resources": [ref("a")]})
    assert hello.hello_id is None and "helloId" not in hello.to_body() and "part" not in hello.to_body()
    sync = Sync.parse({"resources": []})
    assert sync.to_body() == {"resources": []}
    parted = Sync.parse({"resources": [], "syncId": "s1", "part": 1, "parts": 2})
    assert parted.to_body() == {"resources": [], "syncId": "s1", "part": 1, "parts": 2}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"helloId": "h", "part": 2, "parts": 2}, "part 2 is not below parts 2"),
        ({"helloId": "h", "part": 0, "parts": 0}, "parts: Input should be greater than or equal to 1"),
        ({"helloId": "h", "part": -1, "parts": 2}, "part: Input should be greater than or equal to 0"),
        ({"part": 0, "parts": 2}, "helloId missing"),
        ({"helloId": "h", "part": "0", "parts": 2}, "part: Input should be a valid integer"),
        ({"helloId": "", "part": 0, "parts": 2}, "helloId: String should have at least 1 character"),
    ],
)
def test_wrong_part_fields_refuse_the_body_naming_what_is_wrong(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidBody) as caught:
        Hello.parse_lenient({"epoch": "e", "resources": [], **fields})
    assert message in str(caught.value) and caught.value.reason == "invalid"


# -- splitting -------------------------------------------------------------------------------------


def test_split_to_fit_keeps_every_item_in_order_and_each_slice_under_the_limit() -> None:
    items = [ref(f"ds-{i:05d}") for i in range(3000)]

    def size(chunk: list[dict[str, str]]) -> int:
        env = Envelope.new(node=NODE, kind=CONTROL_KIND, op=Op.SYNC, body={"resources": chunk})
        return len(encode(env, max_payload=2**62))

    slices = split_to_fit(items, size, LIMIT)
    assert len(slices) > 1
    assert [item for s in slices for item in s] == items
    assert all(size(s) <= LIMIT for s in slices)
    assert split_to_fit(items[:3], size, LIMIT) == [items[:3]]  # fits: one slice
    assert split_to_fit([], size, LIMIT) == [[]]
    with pytest.raises(PayloadTooLarge):
        split_to_fit([ref("x" * LIMIT)], size, LIMIT)


# -- gathering -------------------------------------------------------------------------------------


def test_the_gatherer_completes_a_set_in_any_order_and_refuses_parts_that_cannot_join() -> None:
    g: PartGatherer[str] = PartGatherer("hello")
    assert g.add("h1", 1, 3, ["b"], header="e1") == (None, None)
    with pytest.raises(PartRefused) as caught:
        g.add("h1", 1, 3, ["x"], header="e1")
    assert caught.value.reason == "duplicate_part"
    for args, reason in [
        (("h1", 0, 4, ["x"]), "part_mismatch"),
        (("h1", 0, MAX_PARTS + 1, ["x"]), "too_many_parts"),
    ]:
        with pytest.raises(PartRefused) as caught:
            g.add(*args, header="e1")  # type: ignore[arg-type]
        assert caught.value.reason == reason
    with pytest.raises(PartRefused, match="header differs"):
        g.add("h1", 0, 3, ["x"], header="e2")
    assert g.current is not None and g.current.items == 1  # the refused parts changed nothing
    assert g.add("h1", 2, 3, ["c"], header="e1") == (None, None)
    assert g.add("h1", 0, 3, ["a"], header="e1") == (["a", "b", "c"], None)
    with pytest.raises(PartRefused) as caught:
        g.add("h1", 0, 3, ["a"], header="e1")  # a late copy of an answered one
    assert caught.value.reason == "unknown_hello"
    # a new id drops the incomplete set
    g.add("h2", 0, 2, ["a"])
    gathered, dropped = g.add("h3", 0, 2, ["z"])
    assert gathered is None and dropped is not None and dropped.id == "h2"
    with pytest.raises(PartRefused, match="complete or given up"):
        g.add("h2", 1, 2, ["b"])


# -- the LC ----------------------------------------------------------------------------------------


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.sent.append((topic, payload))

    def hellos(self) -> list[bytes]:
        return [p for _, p in self.sent if decode(p, max_payload=2**62).op is Op.HELLO]


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, held: list[str], wire: Wire, clock: Clock | None = None) -> Session:
    store = Store(tmp_path / "lc.db", sync="normal")
    with store.tx():
        for name in held:
            obj = {"apiVersion": "sedna.io/v1alpha1", "kind": "Dataset",
                   "metadata": {"name": name, "namespace": "default"},
                   "spec": {"url": "/d", "format": "txt", "nodeName": NODE}}  # fmt: skip
            store.put_resource("Dataset", "default", name, "1", obj)
    wiring: dict[str, Any] = {"node": NODE, "topics": TOPICS, "codec": Codec.MSGPACK, "max_payload": LIMIT}
    return Session(store, Outbox(store), publish=wire, clock=clock or Clock(), **wiring)


def sync(resources: list[dict[str, str]], **parts: Any) -> bytes:
    env = Envelope.new(node=NODE, kind=CONTROL_KIND, op=Op.SYNC, body={"resources": resources, **parts})
    return encode(env)


def down(s: Session, *payloads: bytes) -> None:
    for payload in payloads:
        s.handle_message(TOPICS.down_ctl(NODE), payload)
        s.run_pending()


def held(s: Session) -> set[str]:
    return {r["name"] for r in s.store.held()}


def test_an_lc_holding_ten_thousand_resources_says_hello_in_parts_within_the_limit(tmp_path: Path) -> None:
    names = [f"ds-{i:05d}" for i in range(10_000)]
    wire = Wire()
    s = make(tmp_path, names, wire)
    s.handle_connect(True)
    s.run_pending()
    payloads = wire.hellos()
    assert len(payloads) > 1 and all(len(p) <= LIMIT for p in payloads)
    bodies = [Hello.parse(decode(p, max_payload=LIMIT).body) for p in payloads]
    assert len({b.hello_id for b in bodies}) == 1
    assert [(b.part, b.parts) for b in bodies] == [(i, len(bodies)) for i in range(len(bodies))]
    assert [r.name for b in bodies for r in b.resources] == names
    assert {(b.epoch, b.boot, b.outbox) for b in bodies} == {(bodies[0].epoch, s.boot, bodies[0].outbox)}
    assert s.hellos == 1 and s.hello_parts == len(bodies) and s.rejected == {}
    s.store.close()


def test_the_lc_applies_a_sync_in_parts_only_once_it_has_every_part(tmp_path: Path) -> None:
    clock, wire = Clock(), Wire()
    s = make(tmp_path, ["a", "b", "c", "gone"], wire, clock)
    s.handle_connect(True)
    s.run_pending()
    down(s, sync([ref("a")], syncId="s1", part=0, parts=3), sync([ref("b")], syncId="s1", part=1, parts=3))
    assert held(s) == {"a", "b", "c", "gone"}  # nothing dropped from part of a list
    clock.now += 10.1
    s.run_pending()
    assert s.hello_retries == 1  # nor is the hello answered
    down(s, sync([ref("c")], syncId="s1", part=2, parts=3))
    assert held(s) == {"a", "b", "c"}
    clock.now += 1000
    s.run_pending()
    assert s.hello_retries == 1  # answered
    assert s.rejected == {}
    s.store.close()


def test_bad_sync_parts_are_refused_counted_and_change_nothing(tmp_path: Path) -> None:
    s = make(tmp_path, ["a", "b", "gone"], Wire())
    down(s, sync([ref("a")], syncId="s1", part=0, parts=2))
    down(
        s,
        sync([], syncId="s1", part=0, parts=2),  # duplicate_part
        sync([], syncId="s1", part=1, parts=3),  # part_mismatch
        sync([], syncId="s1", part=1, parts=MAX_PARTS + 1),  # too_many_parts
        sync([], syncId="s1", part=2, parts=2),  # invalid: not below parts
        sync([], syncId="s1", part=1),  # invalid: parts missing
    )
    assert s.rejected == {"duplicate_part": 1, "part_mismatch": 1, "too_many_parts": 1, "invalid": 2}
    assert held(s) == {"a", "b", "gone"}
    down(s, sync([ref("b")], syncId="s1", part=1, parts=2))  # the set completes as it began
    assert held(s) == {"a", "b"}
    down(s, sync([], syncId="s1", part=1, parts=2))  # a late copy: nothing may drop "a" and "b"
    assert s.rejected["unknown_sync"] == 1 and held(s) == {"a", "b"}
    # a new sync drops an incomplete one, counted; a whole sync drops one too
    down(s, sync([ref("a")], syncId="s2", part=0, parts=2), sync([ref("a")], syncId="s3", part=0, parts=2))
    down(s, sync([ref("a"), ref("b")]))
    assert s.rejected["incomplete_sync"] == 2 and held(s) == {"a", "b"}
    s.store.close()


# -- the GM's gathering ----------------------------------------------------------------------------


def hello_part(hid: str, part: int, parts: int, names: list[str]) -> Hello:
    body = {"epoch": "e", "resources": [ref(n) for n in names], "helloId": hid, "part": part, "parts": parts}
    return Hello.parse(body)


def test_the_gm_drops_an_incomplete_hello_after_its_timeout_and_bounds_what_it_gathers() -> None:
    from lifelong.cloud.intake import HelloParts

    now = [0.0]
    dropped: list[tuple[str, str, str]] = []
    parts = HelloParts(
        lambda node, s, why: dropped.append((node, s.id, why)),
        clock=lambda: now[0],
        timeout=30.0,
        max_open=2,
        max_items=5,
    )
    assert parts.add("n1", hello_part("h1", 0, 2, ["a", "b"])) is None
    assert (parts.open(), parts.items) == (1, 2)
    whole = parts.add("n1", hello_part("h1", 1, 2, ["c"]))
    assert whole is not None and [r.name for r in whole.resources] == ["a", "b", "c"]
    assert (parts.open(), parts.items) == (0, 0)
    parts.add("n1", hello_part("h2", 0, 2, ["a"]))
    now[0] = 31.0
    parts.add("n2", hello_part("h3", 0, 2, ["a"]))  # any part sweeps the expired sets
    assert dropped == [("n1", "h2", "it was still incomplete after 30 s")]
    assert (parts.open(), parts.items) == (1, 1)
    parts.add("n3", hello_part("h4", 0, 2, ["a"]))
    with pytest.raises(PartRefused) as caught:  # a third open set
        parts.add("n4", hello_part("h5", 0, 2, ["a"]))
    assert caught.value.reason == "busy"
    with pytest.raises(PartRefused) as caught:  # over the resources held
        parts.add("n2", hello_part("h3", 1, 3, ["b", "c", "d", "e"]))
    assert caught.value.reason == "part_mismatch"  # checked first: nothing changes
    with pytest.raises(PartRefused) as caught:
        parts.add("n2", hello_part("h3", 1, 2, ["b", "c", "d", "e"]))
    assert caught.value.reason == "busy"
    assert dropped[-1][:2] == ("n2", "h3") and (parts.open(), parts.items) == (1, 1)
    parts.forget("n3")
    assert (parts.open(), parts.items) == (0, 0)
