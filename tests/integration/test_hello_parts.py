"""Hellos and syncs in parts (docs/protocol.md, ``hello`` and ``sync``) between the real GM (an
in-process ``GMService``) and the LC on real brokers (mosquitto and amqtt).

The LC is the real protocol side of ``lifelong lc``: its ``Session`` on a ``BusClient``, wired as
``edge/service.py`` wires them, without the manager and workers (which would try to count 10,000
datasets' files; nothing here needs them). The LC's store is seeded directly with 10,000
Datasets (one transaction), and the GM's desired state for the node with 10,000 rows of its
bookkeeping (``GMState.set_down``, one transaction): applying 10,000 objects over the API would
take a minute and test nothing more here. One Dataset more is applied over the API, so the
path from the API to the node is the real one.

Covered: an LC holding 10,000 resources says hello in parts and applies the sync in parts (the
resource the GM does not name is deleted, the one it lacks is sent); a GM with 10,000 resources
for a node gathers a hello in parts and answers it with a sync in parts; bad parts refused,
counted and changing nothing; an incomplete hello never answered, and the LC's retry then
answered.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.brokers import Broker
from harness.paho_lc import PahoLC, api, make_gm
from harness.waiting import wait_for

from lifelong.cloud.service import GMService
from lifelong.common.bus import BusClient, ReconnectPolicy
from lifelong.common.codec import Codec, decode, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.messages import MAX_PARTS, Hello, split_to_fit
from lifelong.common.topics import Topics
from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox
from lifelong.edge.session import Session

NODE = "node-a"
MANY = 10_000


def dataset(name: str, rv: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if rv is not None:
        meta["resourceVersion"] = rv
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": meta,
        "spec": {"url": f"/data/{name}.txt", "format": "txt", "nodeName": NODE},
    }


def names(count: int) -> list[str]:
    return [f"ds-{i:05d}" for i in range(count)]


def seed_gm(gm: GMService, count: int, rv: str = "1") -> None:
    """The GM's desired state: ``count`` Datasets for ``NODE`` at ``rv`` (its bookkeeping rows)."""
    with gm.state.transaction():
        for name in names(count):
            gm.state.set_down(NODE, ("Dataset", "default", name), "upsert", rv, dataset(name, rv))


def rejected(gm: GMService, reason: str) -> float:
    value: float = gm.metrics.upstream_rejected.labels(reason=reason)._value.get()
    return value


def hellos(gm: GMService) -> float:
    value: float = gm.metrics.hellos._value.get()
    return value


class SessionLC:
    """The LC's protocol side (``Session`` on a ``BusClient``) on a real broker. ``drop`` may
    keep a publish from leaving (True: dropped, as if lost on the way)."""

    def __init__(
        self,
        broker: Broker,
        prefix: str,
        tmp_path: Path,
        *,
        max_payload: int = 256 * 1024,
        hello_retry: float = 10.0,
        drop: Callable[[str, bytes], bool] | None = None,
    ) -> None:
        self.store = Store(tmp_path / "lc.db", sync="normal")
        self.topics = Topics(prefix)
        self.drop = drop
        self.session = Session(
            self.store,
            Outbox(self.store),
            node=NODE,
            topics=self.topics,
            codec=Codec.MSGPACK,
            max_payload=max_payload,
            publish=self._publish,
            hello_retry=hello_retry,
        )
        self.bus = BusClient(
            client_id=NODE,
            address=broker.edge_url,
            reconnect=ReconnectPolicy(initial=0.1, maximum=1.0),
            on_connect=self.session.handle_connect,
            on_disconnect=self.session.handle_disconnect,
        )

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        if self.drop is not None and self.drop(topic, payload):
            return
        self.bus.publish(topic, payload, qos=1, retain=retain)

    def start(self) -> None:
        self.session.start()
        self.bus.subscribe(self.topics.node_down_filter(NODE), self.session.handle_message)
        self.bus.subscribe(self.topics.gm_presence(), self.session.handle_gm_presence)
        self.bus.start()

    def close(self) -> None:
        self.bus.close()
        self.session.stop()
        self.store.close()

    def held(self) -> set[str]:
        return {r["name"] for r in self.store.held()}

    def answered(self) -> bool:
        """The last hello was answered by a whole sync (the session waits for none)."""
        return self.session._hello_due is None and self.session.hellos > 0


@pytest.fixture
def gm(broker: Broker, prefix: str, tmp_path: Path) -> Iterator[GMService]:
    g = make_gm(broker, prefix, tmp_path)
    yield g
    g.stop()


def syncs(spy: PahoLC) -> list[Envelope]:
    return spy.envelopes(Op.SYNC)


def last_part(envs: list[Envelope]) -> bool:
    """The last message is the last part of a sync."""
    body = envs[-1].body or {} if envs else {}
    return bool(body) and body["part"] == body["parts"] - 1


def test_an_lc_holding_ten_thousand_resources_says_hello_and_applies_the_sync_in_parts(
    broker: Broker, prefix: str, tmp_path: Path, gm: GMService
) -> None:
    seed_gm(gm, MANY)
    assert api(gm, "POST", "/api/v1/apply", dataset("ds-new"))["result"] == "created"
    spy = PahoLC(broker, prefix, "spy-of-node-a")  # a second subscriber of node-a's down topics
    spy.client.subscribe(spy.topics.node_down_filter(NODE), 1)
    lc = SessionLC(broker, prefix, tmp_path / "lc")
    try:
        with lc.store.tx():  # the LC holds every one the GM wants, and one it no longer does
            for name in [*names(MANY), "ds-gone"]:
                lc.store.put_resource("Dataset", "default", name, "1", dataset(name, "1"))
        lc.start()
        wait_for(
            lambda: lc.answered() and "ds-new" in lc.held() and "ds-gone" not in lc.held(),
            timeout=60,
            what="the LC to apply the sync of its hello in parts",
        )
        assert lc.held() == {*names(MANY), "ds-new"}
        assert lc.session.hellos == 1 and lc.session.hello_parts > 1  # one hello, in parts
        assert hellos(gm) == 1
        wait_for(lambda: len(syncs(spy)) > 1, what="the spy to see the sync's parts")
        parts = syncs(spy)
        bodies = [e.body or {} for e in parts]
        assert [b["part"] for b in bodies] == list(range(bodies[0]["parts"]))
        assert len({b["syncId"] for b in bodies}) == 1
        assert sum(len(b["resources"]) for b in bodies) == MANY + 1
        assert lc.session.rejected == {}
    finally:
        lc.close()
        spy.close()


def parted_hello(
    resources: list[dict[str, str]], *, limit: int = 256 * 1024, hello_id: str | None = None
) -> list[bytes]:
    """A hello in parts as a third-party LC would build it (plain codec and models)."""
    hid = hello_id or uuid.uuid4().hex
    header = {"agent": "paho-lc/0", "epoch": "epoch-1", "boot": "b", "resources": []}

    def payload(chunk: list[dict[str, str]], part: int, parts: int) -> bytes:
        body = {**header, "resources": chunk, "helloId": hid, "part": part, "parts": parts}
        Hello.parse(body)  # what the GM will check
        env = Envelope.new(node=NODE, kind=CONTROL_KIND, op=Op.HELLO, body=body)
        return encode(env, max_payload=2**62)

    slices = split_to_fit(resources, lambda c: len(payload(c, MAX_PARTS - 1, MAX_PARTS)), limit - 64)
    return [payload(c, i, len(slices)) for i, c in enumerate(slices)]


def refs(count: int, rv: str = "1") -> list[dict[str, str]]:
    return [{"kind": "Dataset", "ns": "default", "name": n, "rv": rv} for n in names(count)]


def test_a_gm_with_ten_thousand_resources_for_a_node_gathers_its_hello_and_syncs_it_in_parts(
    broker: Broker, prefix: str, gm: GMService
) -> None:
    seed_gm(gm, MANY)
    lc = PahoLC(broker, prefix, NODE)
    try:
        held = refs(MANY)
        held[0] = {**held[0], "rv": "0"}  # an older version: sent again
        del held[1]  # one it lacks: sent
        held.append({"kind": "Dataset", "ns": "default", "name": "ds-gone", "rv": "1"})  # not named
        payloads = parted_hello(held)
        assert len(payloads) > 1
        for payload in payloads:
            lc.send(lc.topics.up_ctl(NODE), payload)
        wait_for(lambda: last_part(syncs(lc)), timeout=60, what="every part of the sync")
        bodies = [e.body or {} for e in syncs(lc)]
        assert bodies[0]["parts"] > 1 and [b["part"] for b in bodies] == list(range(bodies[0]["parts"]))
        named = [r["name"] for b in bodies for r in b["resources"]]
        assert sorted(named) == names(MANY)  # every one it should hold, once; not ds-gone
        upserts = {e.name for e in lc.envelopes(Op.UPSERT, "Dataset")}  # (resent until acked)
        assert upserts == {"ds-00000", "ds-00001"}
        assert hellos(gm) == 1
        assert gm.intake.hello_parts.open() == 0 and gm.intake.hello_parts.items == 0
    finally:
        lc.close()


def test_bad_parts_of_a_hello_are_refused_counted_and_change_nothing(
    broker: Broker, prefix: str, gm: GMService
) -> None:
    lc = PahoLC(broker, prefix, NODE)
    topic = lc.topics.up_ctl(NODE)

    def part(hid: str, index: int, total: int, names_: list[str], epoch: str = "epoch-1") -> bytes:
        held = [{"kind": "Dataset", "ns": "default", "name": n, "rv": "1"} for n in names_]
        body = {"agent": "a", "epoch": epoch, "boot": "b", "helloId": hid, "part": index, "parts": total}
        body["resources"] = held
        return encode(Envelope.new(node=NODE, kind=CONTROL_KIND, op=Op.HELLO, body=body))

    try:
        lc.send(topic, part("h1", 0, 3, ["a"]))
        wait_for(lambda: gm.intake.hello_parts.open() == 1, what="the first part gathered")
        bad = {
            "invalid": part("h1", 3, 3, ["x"]),  # index not below the count
            "too_many_parts": part("h1", 1, MAX_PARTS + 1, ["x"]),
            "duplicate_part": part("h1", 0, 3, ["x"]),
            "part_mismatch": part("h1", 1, 4, ["x"]),  # the first part said 3
        }
        for payload in bad.values():
            lc.send(topic, payload)
        for reason in bad:
            wait_for(lambda r=reason: rejected(gm, r) == 1, what=f"one part refused as {reason}")  # type: ignore[misc]
        lc.send(topic, part("h1", 1, 3, ["b"], epoch="epoch-2"))  # another header
        wait_for(lambda: rejected(gm, "part_mismatch") == 2, what="a part with another epoch refused")
        # nothing changed: the set still holds its one part, and the right parts complete it
        assert gm.intake.hello_parts.open() == 1 and gm.intake.hello_parts.items == 1
        assert not syncs(lc) and hellos(gm) == 0
        lc.send(topic, part("h1", 2, 3, ["c"]))
        lc.send(topic, part("h1", 1, 3, ["b"]))
        wait_for(lambda: syncs(lc), what="the sync of the completed hello")
        assert hellos(gm) == 1 and gm.intake.hello_parts.open() == 0
        assert gm.state.node(NODE) is not None
        # a part of a hello already answered is refused (a late copy), and answers nothing
        lc.send(topic, part("h1", 1, 3, ["b"]))
        wait_for(lambda: rejected(gm, "unknown_hello") == 1, what="the late part refused")
        assert gm.intake.hello_parts.open() == 0 and len(syncs(lc)) == 1
        assert rejected(gm, "internal") == 0
    finally:
        lc.close()


def test_an_incomplete_hello_is_never_answered_and_the_lcs_retry_is(
    broker: Broker, prefix: str, tmp_path: Path
) -> None:
    limit = 32 * 1024
    gm = make_gm(broker, prefix, tmp_path, max_payload=limit)
    seed_gm(gm, 1000)
    lost: list[bytes] = []
    first_hello: list[int] = []  # the number of parts of the LC's first hello

    def drop(topic: str, payload: bytes) -> bool:
        """Lose the last part of the LC's first hello."""
        env = decode(payload, max_payload=limit)
        if env.op is not Op.HELLO or lost:
            return False
        body = env.body or {}
        if not first_hello:
            first_hello.append(body["parts"])
        if body["part"] == body["parts"] - 1:
            lost.append(payload)
            return True
        return False

    spy = PahoLC(broker, prefix, "spy-of-node-a")
    spy.client.subscribe(spy.topics.node_down_filter(NODE), 1)
    lc = SessionLC(broker, prefix, tmp_path / "lc", max_payload=limit, hello_retry=1.5, drop=drop)
    try:
        with lc.store.tx():
            for name in [*names(1000), "ds-gone"]:
                lc.store.put_resource("Dataset", "default", name, "1", dataset(name, "1"))
        lc.start()
        wait_for(lambda: lost and gm.intake.hello_parts.open() == 1, what="the first hello, short of a part")
        assert first_hello[0] > 1
        # Never answered: the LC, given no sync, says hello again (a new helloId)
        wait_for(lambda: lc.session.hello_retries >= 1, timeout=20, what="the LC's retry")
        wait_for(lc.answered, timeout=30, what="the retry's sync applied")
        assert lc.held() == set(names(1000))
        assert hellos(gm) == 1  # only the complete hello counts as one
        assert rejected(gm, "incomplete_hello") == 1  # the first set, dropped by the retry
        sync_ids = {(e.body or {})["syncId"] for e in syncs(spy)}
        assert len(sync_ids) == 1  # one sync only: the incomplete hello got none
    finally:
        lc.close()
        spy.close()
        gm.stop()
