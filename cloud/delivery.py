"""The GM's delivery to the edge: what each node should hold, sending it, making sure it arrives.

Who calls it: the controllers say which nodes need an object (``want``) or that it is gone
(``gone``); ``cloud/intake.py`` passes on hellos (``on_hello``) and the LC's acks
(``on_ack``); the service calls ``resend_due`` periodically.

Level-triggered, never trusting the broker to queue for an offline node:

* every (node, resource) the node should hold is a row in ``GMState.downstream`` with the
  version to send and the object as sent; a tombstone row (op ``delete``) stands for a delete
  the node has not acknowledged yet;
* a change is published at once if the node is online; unacknowledged rows are resent with
  exponential backoff (``resend_base`` doubling, capped at ``resend_cap``) while it stays online;
* on every hello the node's list is diffed against the rows: upserts for what it lacks or holds
  at another version, deletes for tombstones it still holds, then a ``sync`` naming everything
  it should hold (the LC drops the rest).

An object's sent version only moves when what is sent changes (``include_status=False`` kinds
such as Dataset ignore status-only changes), so a node is not sent its own dataset counts back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from lifelong.cloud.gmstate import DownRow, GMState
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.stores.base import Object
from lifelong.common.codec import Codec, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.errors import BusError, PayloadTooLarge
from lifelong.common.topics import Topics

log = logging.getLogger(__name__)

Key = tuple[str, str, str]
Publish = Callable[[str, bytes], object]
"""Publishes one QoS 1 message; raises ``BusError`` (e.g. ``NotConnected``) when it cannot."""


def _content(obj: Object | None, include_status: bool) -> Object | None:
    if obj is None:
        return None
    out = {k: v for k, v in obj.items() if include_status or k != "status"}
    meta = dict(out.get("metadata") or {})
    meta.pop("resourceVersion", None)
    out["metadata"] = meta
    return out


class Delivery:
    """Per-node desired state, publishing, acknowledgement and resend."""

    def __init__(
        self,
        state: GMState,
        topics: Topics,
        publish: Publish,
        *,
        metrics: GMMetrics,
        codec: Codec | str = Codec.MSGPACK,
        max_payload: int | None = None,
        resend_base: float = 2.0,
        resend_cap: float = 60.0,
    ) -> None:
        self.state = state
        self.topics = topics
        self._publish = publish
        self.metrics = metrics
        self.codec = Codec(codec)
        self.max_payload = max_payload
        self.resend_base = resend_base
        self.resend_cap = resend_cap
        # Rows of one (node, key) are changed under this lock, so that a hello's diff and a
        # controller's change cannot interleave.
        self._lock = threading.RLock()

    # -- controllers -----------------------------------------------------------------------
    def want(self, key: Key, nodes: Iterable[str], obj: Object, *, include_status: bool = True) -> None:
        """``nodes`` should hold ``obj`` (at its version); any other node that held it gets a delete."""
        rv = str(obj.get("metadata", {}).get("resourceVersion", ""))
        wanted = set(nodes)
        content = _content(obj, include_status)
        with self._lock:
            rows = {row.node: row for row in self.state.down_rows(key=key)}
            for node in sorted(wanted):
                row = rows.get(node)
                if row is not None and row.op == "upsert" and _content(row.object, include_status) == content:
                    continue  # the node already has (or is being sent) this content
                if self.state.set_down(node, key, "upsert", rv, obj):
                    self._send_row(node, key)
            for node, row in rows.items():
                if (
                    node not in wanted
                    and row.op == "upsert"
                    and self.state.set_down(node, key, "delete", rv, None)
                ):
                    self._send_row(node, key)

    def gone(self, key: Key, rv: str) -> None:
        """The object was deleted (at version ``rv``): every node that held it gets a delete."""
        with self._lock:
            for row in self.state.down_rows(key=key):
                if row.op == "upsert" and self.state.set_down(row.node, key, "delete", rv, None):
                    self._send_row(row.node, key)

    def nodes_of(self, key: Key) -> list[str]:
        return [row.node for row in self.state.down_rows(key=key) if row.op == "upsert"]

    # -- upstream control messages ---------------------------------------------------------
    def on_hello(self, node: str, held: Iterable[dict[str, Any]]) -> None:
        """Send ``node`` the difference between what it holds and what it should, then a sync."""
        holds: dict[Key, str] = {}
        for item in held:
            try:
                holds[(str(item["kind"]), str(item["ns"]), str(item["name"]))] = str(item.get("rv", ""))
            except (KeyError, TypeError):
                continue
        with self._lock:
            # One short transaction for the node's rows (a hello diff of hundreds of resources
            # is one commit), then the publishing, outside it: the state's lock is also taken
            # by the network thread (presence, hello), which must keep reading.
            to_send: list[DownRow] = []
            with self.state.transaction():
                self.state.reset_backoff(node)
                rows = self.state.down_rows(node=node)
                desired: list[DownRow] = []
                for row in rows:
                    if row.op == "upsert":
                        desired.append(row)
                        if holds.get(row.key) != row.rv:
                            to_send.append(row)
                        elif not row.acked:
                            self.state.ack_down(node, row.key, row.rv, "upsert")
                    elif row.key in holds:
                        to_send.append(row)  # a delete it has not seen
                    else:
                        self.state.drop_down(node, row.key)  # the tombstone has done its job
                for row in to_send:
                    self.state.mark_sent(row.node, row.key, row.rv)
            for row in to_send:
                self._send(row, mark=False)
            body = {"resources": [{"kind": r.kind, "ns": r.ns, "name": r.name, "rv": r.rv} for r in desired]}
            env = Envelope.new(node=node, kind=CONTROL_KIND, op=Op.SYNC, body=body)
            self._publish_env(self.topics.down_ctl(node), env)

    def on_ack(self, node: str, applied: Iterable[dict[str, Any]]) -> int:
        acks: list[tuple[Key, str, str]] = []
        for item in applied:
            try:
                key = (str(item["kind"]), str(item["ns"]), str(item["name"]))
                acks.append((key, str(item["rv"]), str(item.get("op", ""))))
            except (KeyError, TypeError):
                continue
        count = 0
        with self._lock, self.state.transaction():  # one commit per ack message
            for key, rv, op in acks:
                if self.state.ack_down(node, key, rv, op):
                    count += 1
        return count

    def ack_upstream(self, node: str, epoch: str, seqs: list[int]) -> bool:
        """Tell ``node`` its reports ``seqs`` are applied. False if it could not be published."""
        env = Envelope.new(node=node, kind=CONTROL_KIND, op=Op.ACK, body={"epoch": epoch, "seqs": seqs})
        return self._publish_env(self.topics.down_ctl(node), env)

    # -- resend ----------------------------------------------------------------------------
    def backoff(self, attempts: int) -> float:
        if attempts <= 0:
            return 0.0
        return float(min(self.resend_cap, self.resend_base * 2 ** min(attempts - 1, 30)))

    def resend_due(self, now: float | None = None) -> int:
        """Resend every unacknowledged row of an online node whose backoff has passed."""
        now = time.time() if now is None else now
        online = {n.node for n in self.state.nodes() if n.online}
        sent = 0
        with self._lock:
            for row in self.state.down_rows(unacked=True):
                if row.acked or row.node not in online:
                    continue
                if now - row.last_sent >= self.backoff(row.attempts) and self._send(row):
                    sent += 1
        return sent

    # -- sending ---------------------------------------------------------------------------
    def _send_row(self, node: str, key: Key) -> None:
        info = self.state.node(node)
        if info is None or not info.online:
            return  # its hello will bring it up to date
        for row in self.state.down_rows(node=node, key=key):
            self._send(row)

    def _send(self, row: DownRow, *, mark: bool = True) -> bool:
        if row.op == "upsert":
            env = Envelope.new(
                node=row.node,
                kind=row.kind,
                ns=row.ns,
                name=row.name,
                op=Op.UPSERT,
                rv=row.rv,
                body={"object": row.object},
            )
        else:
            env = Envelope.new(
                node=row.node, kind=row.kind, ns=row.ns, name=row.name, op=Op.DELETE, rv=row.rv
            )
        if mark:
            self.state.mark_sent(row.node, row.key, row.rv)
        return self._publish_env(self.topics.down(row.node, row.kind, row.ns, row.name), env)

    def _publish_env(self, topic: str, env: Envelope) -> bool:
        try:
            payload = encode(env, self.codec, max_payload=self.max_payload)
        except PayloadTooLarge as exc:
            log.error("cannot send %s %s/%s to %s: %s", env.kind, env.ns, env.name, env.node, exc)
            self.metrics.downstream_failed.labels(reason="too_large").inc()
            return False
        try:
            self._publish(topic, payload)
        except BusError as exc:
            log.debug("publish to %s deferred: %s", topic, exc)
            self.metrics.downstream_failed.labels(reason=type(exc).__name__).inc()
            return False
        self.metrics.downstream_sent.labels(op=env.op.value).inc()
        return True
