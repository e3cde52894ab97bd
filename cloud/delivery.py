"""The GM's delivery to the edge: what each node should hold, sending it, making sure it arrives.

Who calls it: the controllers say which nodes need an object (``want``) or that it is gone
(``gone``); ``cloud/intake.py`` passes on hellos (``on_hello``) and the LC's acks
(``on_ack``); the service calls ``resend_due`` periodically.

Level-triggered, never trusting the broker to queue for an offline node:

* every (node, resource) the node should hold is a row in ``GMState.downstream`` with the
  version to send and the object as sent; a tombstone row (op ``delete``) stands for a delete
  the node has not acknowledged yet;
* a change is published at once if the node is online; unacknowledged rows are resent with
  exponential backoff (``resend_base`` doubling, capped at ``resend_cap``: tenacity's
  ``wait_exponential``, evaluated for the row's attempts) while it stays online;
* on every hello the node's list is diffed against the rows: upserts for what it lacks or holds
  at another version, deletes for tombstones it still holds, then a ``sync`` naming everything
  it should hold (the LC drops the rest), in parts sized from the payload limit to an LC whose
  hello had part fields (docs/protocol.md, ``sync``).

One bad row never stops the others. A row that can never be sent (its envelope is refused,
e.g. a Worker name over 253 characters; it is over the payload limit; its topic is invalid) is
dropped from the bookkeeping, logged once with its node and key and counted in
``lifelong_gm_downstream_dropped_total{reason}``; it is not retried. Any other failure of one row
(in the resend loop, a hello diff, an ack batch, a ``want``) is logged with its key, counted in
``lifelong_gm_item_failures_total{loop}`` and skipped; the loop goes on with the next row.

Building a message (``message``: envelope, topic, payload) is separate from publishing it
(``_publish``), so a hello diff marks its rows sent inside one transaction and publishes after.
Bodies are built with the models of ``lifelong.common.messages`` (``Sync``, ``SeqAck``), and
hellos and acks arrive parsed (``ResourceRef``, ``Applied``; ``cloud/intake.py`` refuses the
rest). An upsert's body is ``{"object": <the row's object>}`` as it is: the API models checked
the object when it was stored, and a pass through ``Upsert`` would cost about 14 us per message
(a job with its conditions) and check nothing new.

An ack item with ``refused`` (the node refused that version of the object, and says why)
acknowledges the row like any other, so it is not resent; it is logged once per
(node, resource, version) and counted in ``lifelong_gm_downstream_refused_total{kind}``. One
that matches no row (an old version, or an object the GM never sent) keeps nothing: counted
under ``kind="(unmatched)"``, logged at DEBUG. Per-node state of this module is bounded: the
locks exist only while held or waited for, the refusals remembered for the log are at most
``REFUSALS_REMEMBERED``.

Locking, per node: work for different nodes never waits on a lock of this module, only on
the bookkeeping database's, which is held for single statements or one short transaction and
never while publishing. The rules:

1. Everything that changes a node's rows and publishes what follows (``want``, ``gone``, a
   hello diff with its ``sync``, a resend) holds that node's lock from reading the row to
   publishing the message. So a node's messages leave in the order its rows changed: a
   ``sync`` is never published after an upsert of a resource it does not name (the LC would
   drop what it just stored), and an older version is never published after a newer one.
2. ``want`` and ``gone`` hold the object's lock for the whole call (the set of nodes holding
   it is read and changed by one call at a time) and take its nodes' locks one at a time
   inside. Lock order: object, then one node, then the database; a hello diff and a resend
   take one node lock only, so there is no cycle. (Hence: never call this module inside a
   ``GMState.transaction()``.) The resend loop does not wait for a busy node: it skips it
   until its next tick.
3. ``on_ack`` takes no lock here: each acknowledgement is one compare-and-set on the row's
   version in the database (``GMState.ack_down``), so an ack of an old version matches nothing
   once a newer one is recorded, whatever runs beside it.

An object's sent version only moves when what is sent changes (``include_status=False`` kinds
such as Dataset ignore status-only changes), so a node is not sent its own dataset counts back.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from lifelong.cloud.gmstate import DownRow, GMState
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.stores.base import Object
from lifelong.common.backoff import exponential, wait_seconds
from lifelong.common.codec import DEFAULT_MAX_PAYLOAD, Codec, encode
from lifelong.common.envelope import CONTROL_KIND, MAX_INT, Envelope, Op
from lifelong.common.errors import BusError, LifelongError, PayloadTooLarge, TopicError
from lifelong.common.messages import MAX_PARTS, Applied, ResourceRef, SeqAck, Sync, split_into_parts
from lifelong.common.topics import Topics

log = logging.getLogger(__name__)

Key = tuple[str, str, str]
Publish = Callable[[str, bytes], object]
"""Publishes one QoS 1 message; raises ``BusError`` (e.g. ``NotConnected``) when it cannot."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message ready to publish."""

    topic: str
    payload: bytes
    op: Op


@dataclass(slots=True)
class HelloPlan:
    """A hello diff decided and recorded (``Delivery.plan_hello``), not yet published."""

    node: str
    to_send: list[DownRow] = field(default_factory=list)
    desired: list[DownRow] = field(default_factory=list)
    parted: bool = False
    """The hello came with part fields: its LC reads a sync in parts."""


class Unsendable(Exception):
    """A message that can never be built: ``reason`` is ``invalid``, ``too_large`` or ``topic``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class KeyedLocks:
    """One re-entrant lock per key, made on first use and forgotten when nobody holds or waits
    for it (so a GM with many nodes and objects keeps only the locks in use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[Hashable, tuple[threading.RLock, list[int]]] = {}

    @contextmanager
    def hold(self, key: Hashable, *, wait: bool = True) -> Iterator[bool]:
        """Hold ``key``'s lock inside the block; with ``wait=False`` the block gets False (and
        holds nothing) if another thread holds it."""
        with self._lock:
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = (threading.RLock(), [0])
            entry[1][0] += 1
        acquired = False
        try:
            acquired = entry[0].acquire(blocking=wait)
            yield acquired
        finally:
            if acquired:
                entry[0].release()
            with self._lock:
                entry[1][0] -= 1
                if entry[1][0] == 0:
                    del self._locks[key]


UNMATCHED = "(unmatched)"
"""The ``kind`` label of a refusal that matches no row (an old version, or a made-up object)."""
REFUSALS_REMEMBERED = 4096
"""How many refused (node, resource, version) the log remembers, so each is logged once."""


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.topics = topics
        self.bus_publish = publish
        self.metrics = metrics
        self.codec = Codec(codec)
        self.max_payload = max_payload
        self.resend_wait = exponential(resend_base, resend_cap)
        """The wait before resending a row after its n-th attempt (a tenacity wait strategy)."""
        self.clock = clock
        self._nodes = KeyedLocks()  # see "Locking" in the module docstring
        self._objects = KeyedLocks()
        self._refusals_lock = threading.Lock()
        self._refusals_logged: dict[tuple[str, Key, str], None] = {}  # insertion-ordered set
        self._local = threading.local()  # .deferred: this thread's held-back want/gone calls

    @contextmanager
    def deferring(self) -> Iterator[list[Callable[[], None]]]:
        """Inside the block, this thread's ``want`` and ``gone`` calls are not run but appended
        to the list it yields, in order, for the caller to run once the store transaction that
        wrote their objects has committed (the job controller's reconciles in a burst,
        ``cloud/service.py``): nothing is sent at a version that is not durable yet."""
        pending: list[Callable[[], None]] = []
        self._local.deferred = pending
        try:
            yield pending
        finally:
            self._local.deferred = None

    def _deferred(self) -> list[Callable[[], None]] | None:
        deferred: list[Callable[[], None]] | None = getattr(self._local, "deferred", None)
        return deferred

    # -- controllers -----------------------------------------------------------------------
    def want(
        self,
        key: Key,
        nodes: Iterable[str],
        obj: Object,
        *,
        include_status: bool = True,
        then: Callable[[], None] | None = None,
    ) -> None:
        """``nodes`` should hold ``obj`` (at its version); any other node that held it gets a
        delete. ``then`` is called once this has run (when held back by ``deferring``, after the
        commit); not if it raised."""
        deferred = self._deferred()
        if deferred is not None:
            later = functools.partial(
                self.want, key, list(nodes), obj, include_status=include_status, then=then
            )
            deferred.append(later)
            return
        rv = str(obj.get("metadata", {}).get("resourceVersion", ""))
        wanted = set(nodes)
        content = _content(obj, include_status)
        with self._objects.hold(key):
            rows = {row.node: row for row in self.state.down_rows(key=key)}
            for node in sorted(wanted):
                row = rows.get(node)
                if row is not None and row.op == "upsert" and _content(row.object, include_status) == content:
                    continue  # the node already has (or is being sent) this content
                self._change("want", node, key, rv, obj)
            for node, row in rows.items():
                if node not in wanted and row.op == "upsert":
                    self._change("want", node, key, rv, None)
        if then is not None:
            then()

    def gone(self, key: Key, rv: str) -> None:
        """The object was deleted (at version ``rv``): every node that held it gets a delete."""
        deferred = self._deferred()
        if deferred is not None:
            deferred.append(functools.partial(self.gone, key, rv))
            return
        with self._objects.hold(key):
            for row in self.state.down_rows(key=key):
                if row.op == "upsert":
                    self._change("gone", row.node, key, rv, None)

    def _change(self, loop: str, node: str, key: Key, rv: str, obj: Object | None) -> None:
        """Under the node's lock: record that it should hold ``obj`` (None: a delete) at ``rv``,
        and send it if that changed anything and the node is online."""
        with self._nodes.hold(node):
            try:
                if self.state.set_down(node, key, "upsert" if obj is not None else "delete", rv, obj):
                    self._send_row(node, key)
            except Exception:
                self._failed(loop, node, key)

    def forget_node(self, node: str) -> bool:
        """Forget ``node``'s bookkeeping (``GMState.forget_node``) under its lock, so no change or
        resend of it runs halfway through."""
        with self._nodes.hold(node):
            return self.state.forget_node(node)

    def nodes_of(self, key: Key) -> list[str]:
        return [row.node for row in self.state.down_rows(key=key) if row.op == "upsert"]

    # -- upstream control messages ---------------------------------------------------------
    def on_hello(self, node: str, held: Iterable[ResourceRef]) -> None:
        """Send ``node`` the difference between what it holds and what it should, then a sync."""
        with self._nodes.hold(node):
            # One short transaction for the node's rows (a hello diff of hundreds of resources
            # is one commit); building and publishing the messages come after it.
            with self.state.transaction():
                plan = self.plan_hello(node, held)
            self.send_hello(plan)

    @contextmanager
    def holding_nodes(self, nodes: Iterable[str]) -> Iterator[None]:
        """Hold the locks of ``nodes`` (taken in sorted order) inside the block: a burst of
        hellos (``cloud/intake.py``) plans every diff in one transaction and publishes after it,
        each node's lock held from reading its rows to publishing its ``sync`` (rule 1)."""
        with ExitStack() as stack:
            for node in sorted(set(nodes)):
                stack.enter_context(self._nodes.hold(node))
            yield

    def plan_hello(self, node: str, held: Iterable[ResourceRef]) -> HelloPlan:
        """The bookkeeping of a hello diff: the node's rows read, those to send marked sent.

        Call it inside a ``GMState.transaction()`` holding the node's lock (``on_hello``, or
        ``holding_nodes`` for a burst), and publish with :meth:`send_hello` after the commit
        (under the same lock)."""
        holds: dict[Key, str] = {item.key: item.rv for item in held}
        plan = HelloPlan(node)
        self.state.reset_backoff(node)
        for row in self.state.down_rows(node=node):
            if row.op == "upsert":
                plan.desired.append(row)  # in the sync even if its step below fails
            try:
                if self._diff_row(node, row, holds):
                    self.state.mark_sent(row.node, row.key, row.rv)
                    plan.to_send.append(row)
            except Exception:
                self._failed("hello", node, row.key)
        return plan

    def send_hello(self, plan: HelloPlan) -> None:
        """Publish a planned hello diff (its upserts and deletes), then its ``sync``."""
        node = plan.node
        dropped: set[Key] = set()
        for row in plan.to_send:
            try:
                message = self._message_or_drop(row)
            except Exception:
                self._failed("hello", node, row.key)
                continue
            if message is None:
                dropped.add(row.key)
            else:
                self._publish(message)
        resources = [
            {"kind": r.kind, "ns": r.ns, "name": r.name, "rv": r.rv}
            for r in plan.desired
            if r.key not in dropped
        ]
        if plan.parted:
            self._send_sync_parts(node, resources)
        else:  # an LC that reads only a whole sync: it must fit in one message
            sync = Sync(resources=[ResourceRef.model_validate(r) for r in resources])
            env = Envelope.new(node=node, kind=CONTROL_KIND, op=Op.SYNC, body=sync.to_body())
            self._publish_env(self.topics.down_ctl(node), env)

    def _send_sync_parts(self, node: str, resources: list[dict[str, str]]) -> None:
        """Publish a ``sync`` of ``resources`` in as many parts as the payload limit needs (one if
        it fits), sharing a ``syncId`` (docs/protocol.md, ``sync``)."""
        sync_id = uuid.uuid4().hex
        topic = self.topics.down_ctl(node)

        def envelope(chunk: list[dict[str, str]], part: int, parts: int) -> Envelope:
            head = Sync(resources=[], sync_id=sync_id, part=part, parts=parts).to_body()
            return Envelope.new(node=node, kind=CONTROL_KIND, op=Op.SYNC, body={**head, "resources": chunk})

        def size(chunk: list[dict[str, str]]) -> int:  # the largest part numbers: no part is larger
            return len(encode(envelope(chunk, MAX_PARTS - 1, MAX_PARTS), self.codec, max_payload=MAX_INT))

        limit = self.max_payload if self.max_payload is not None else DEFAULT_MAX_PAYLOAD
        try:
            slices = split_into_parts(resources, size, limit)
        except PayloadTooLarge as exc:
            log.error("cannot send the sync of node %s: %s", node, exc)
            self.metrics.downstream_failed.labels(reason="too_large").inc()
            return
        for index, chunk in enumerate(slices):
            if not self._publish_env(topic, envelope(chunk, index, len(slices))):
                return  # the LC gets no whole sync: its hello is sent again

    def _diff_row(self, node: str, row: DownRow, holds: dict[Key, str]) -> bool:
        """One row of a hello diff: whether it must be sent (acks or drops it where it need not)."""
        if row.op == "upsert":
            if holds.get(row.key) != row.rv:
                return True
            if not row.acked:
                self.state.ack_down(node, row.key, row.rv, "upsert")
            return False
        if row.key in holds:
            return True  # a delete it has not seen
        self.state.drop_down(node, row.key)  # the tombstone has done its job
        return False

    def on_ack(self, node: str, applied: Iterable[Applied]) -> int:
        """Record the LC's acknowledgements of downstream messages (one transaction); returns how
        many matched a row. An item with ``refused`` acknowledges its row too (see above)."""
        count = 0
        with self.state.transaction():  # one commit per ack message
            for item in applied:
                key = (item.kind, item.ns, item.name)
                rv = item.rv if item.rv is not None else ""
                matched = False
                try:
                    matched = self.state.ack_down(node, key, rv, item.op)
                except Exception:
                    self._failed("ack", node, key)
                count += matched
                if item.refused is not None:
                    self._refused(node, key, rv, item.refused, matched)
        return count

    def _refused(self, node: str, key: Key, rv: str, why: str, matched: bool) -> None:
        if not matched:
            # Not a version the GM sent (stale, or made up): nothing is remembered for it, and
            # its kind is not a label (the node chooses it: the label set would grow).
            self.metrics.downstream_refused.labels(kind=UNMATCHED).inc()
            log.debug("node %s refused %s/%s/%.100s rv=%.40s, which matches no row", node, *key, rv)
            return
        self.metrics.downstream_refused.labels(kind=key[0]).inc()
        with self._refusals_lock:
            seen = (node, key, rv) in self._refusals_logged
            if not seen:
                if len(self._refusals_logged) >= REFUSALS_REMEMBERED:
                    del self._refusals_logged[next(iter(self._refusals_logged))]
                self._refusals_logged[(node, key, rv)] = None
        log.log(
            logging.DEBUG if seen else logging.WARNING,
            "node %s refused %s/%s/%.100s rv=%s (acknowledged, not resent): %.300s",
            node,
            key[0],
            key[1],
            key[2],
            rv,
            why,
        )

    def ack_upstream(self, node: str, epoch: str, seqs: list[int]) -> bool:
        """Tell ``node`` its reports ``seqs`` are applied. False if it could not be published."""
        body = SeqAck(epoch=epoch, seqs=seqs).to_body()
        env = Envelope.new(node=node, kind=CONTROL_KIND, op=Op.ACK, body=body)
        return self._publish_env(self.topics.down_ctl(node), env)

    # -- resend ----------------------------------------------------------------------------
    def backoff(self, attempts: int) -> float:
        """Seconds to wait after a row's ``attempts``-th send before sending it again."""
        return wait_seconds(self.resend_wait, attempts)

    def resend_due(self, now: float | None = None) -> int:
        """Resend every unacknowledged row of an online node whose backoff has passed.

        The rows due are found in one query; each node's are then read again and sent under
        the node's lock (a hello diff or a change may have sent them meanwhile). A node whose
        lock is held is skipped, not waited for: its rows still due are resent at the next tick."""
        now = self.clock() if now is None else now
        nodes = sorted(
            {
                node
                for node, last_sent, attempts in self.state.unacked_online()
                if now - last_sent >= self.backoff(attempts)
            }
        )
        online = set(nodes)  # online when read; each node's rows are read again below
        sent = 0
        for node in nodes:
            with self._nodes.hold(node, wait=False) as free:
                if not free:
                    continue  # busy sending this node's rows: what is still due goes next tick
                try:
                    rows = self.state.down_rows(node=node, unacked=True)
                except Exception:
                    self._failed("resend", node, ("", "", ""))
                    continue
                for row in rows:
                    if not self._due(row, online, now):
                        continue
                    try:
                        if self._send(row):
                            sent += 1
                    except Exception:
                        self._failed("resend", row.node, row.key)
        return sent

    def _due(self, row: DownRow, online: set[str], now: float) -> bool:
        return not row.acked and row.node in online and now - row.last_sent >= self.backoff(row.attempts)

    # -- sending ---------------------------------------------------------------------------
    def _send_row(self, node: str, key: Key) -> None:
        info = self.state.node(node)
        if info is None or not info.online:
            return  # its hello will bring it up to date
        for row in self.state.down_rows(node=node, key=key):
            self._send(row)

    def _send(self, row: DownRow) -> bool:
        """Build, mark sent and publish one row; an unsendable row is dropped instead."""
        message = self._message_or_drop(row)
        if message is None:
            return False
        self.state.mark_sent(row.node, row.key, row.rv)
        return self._publish(message)

    def message(self, row: DownRow) -> Message:
        """The upsert or delete message of ``row``. Raises ``Unsendable`` if it can never be sent."""
        try:
            topic = self.topics.down(row.node, row.kind, row.ns, row.name)
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
            return Message(topic, encode(env, self.codec, max_payload=self.max_payload), env.op)
        except PayloadTooLarge as exc:
            raise Unsendable("too_large", str(exc)) from None
        except TopicError as exc:
            raise Unsendable("topic", str(exc)) from None
        except (ValueError, LifelongError) as exc:  # pydantic's ValidationError is a ValueError
            raise Unsendable("invalid", " ".join(str(exc).split())) from None

    def _message_or_drop(self, row: DownRow) -> Message | None:
        try:
            return self.message(row)
        except Unsendable as exc:
            log.error(
                "dropping %s of %s/%s/%s for node %s: it can never be sent (%s): %.300s",
                row.op,
                row.kind,
                row.ns,
                row.name[:100],
                row.node,
                exc.reason,
                exc,
            )
            self.metrics.downstream_dropped.labels(reason=exc.reason).inc()
            self.state.drop_down(row.node, row.key)
            return None

    def _failed(self, loop: str, node: str, key: Key) -> None:
        log.exception("%s: %s/%s/%.300s for node %s failed; skipped", loop, key[0], key[1], key[2], node)
        self.metrics.item_failures.labels(loop=loop).inc()

    def _publish(self, message: Message) -> bool:
        try:
            self.bus_publish(message.topic, message.payload)
        except BusError as exc:
            log.debug("publish to %s deferred: %s", message.topic, exc)
            self.metrics.downstream_failed.labels(reason=type(exc).__name__).inc()
            return False
        self.metrics.downstream_sent.labels(op=message.op.value).inc()
        return True

    def _publish_env(self, topic: str, env: Envelope) -> bool:
        try:
            payload = encode(env, self.codec, max_payload=self.max_payload)
        except PayloadTooLarge as exc:
            log.error("cannot send %s %s/%s to %s: %s", env.kind, env.ns, env.name, env.node, exc)
            self.metrics.downstream_failed.labels(reason="too_large").inc()
            return False
        return self._publish(Message(topic, payload, env.op))
