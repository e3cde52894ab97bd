"""The LC's bus session: identity, presence, hello, downstream apply and the outbox publisher.

Created and started by the service. Speaks docs/protocol.md exactly:

* client id = username = the node name; retained ``presence`` online on every connect, the
  will publishes offline; subscribes to ``{p}/node/{node}/down/#``;
* on every connect and reconnect: ``hello`` on ``up/_ctl`` (agent, outbox epoch, boot id,
  the resources held with their rv, outbox depth/lowSeq/nextSeq), in parts sized from the
  payload limit when one message cannot hold it, and every unacknowledged report becomes due
  again;
* every body is parsed into its model (``lifelong.common.messages``) and every upserted object
  into its API model before anything is stored; what the models refuse is logged once with
  its key and the field, counted (``rejected``, by reason) and never stored;
* downstream ``upsert``/``delete``: stale versions are ignored but still acknowledged; the
  rest is stored; each batch is acknowledged with one ``ack`` (``applied`` list) on
  ``up/_ctl`` after it is committed; a refused object is acknowledged too, with ``refused``
  saying why, so the GM stops resending it. ``sync`` drops what the list does not name (one
  refused item is skipped, the rest applies); a sync in parts is gathered and applied only once
  every part is in (a part that cannot join is refused with its reason). ``ack`` on
  ``down/_ctl`` deletes the named reports from the outbox (one bad seq is skipped);
* whenever the GM's presence (``{p}/gm/presence``) turns ``online`` while the LC stays
  connected (a GM restart, possibly with a lost state DB): a fresh ``hello``, and every
  unacknowledged report becomes due again at once (not after the ack timeout);
* ``log`` on ``down/_ctl`` (the GM asks for part of a worker's log, ``lifelong logs``): answered
  with a ``log`` on ``up/_ctl`` by ``on_log_request`` (``edge/worker_logs.py``) once the batch is
  done; not durable, never queued while disconnected (the GM gives up after its deadline);
* a hello the GM has not answered with a ``sync`` within ``hello_retry`` seconds (lost on
  the way, or its answer was) is sent again, the wait doubling up to ``hello_retry_cap``
  (tenacity's ``wait_exponential``); any ``sync`` that parses ends the wait.

Threads: the bus client's network thread only enqueues (handlers must not block); the
``lc-session`` thread decodes, parses and applies downstream messages and sends hellos; the
``lc-publisher`` thread publishes due outbox entries within the in-flight window. Tests drive
the session thread's step with ``run_pending`` and give the wire (``publish``), the clock and
the store to the constructor.
"""

from __future__ import annotations

import itertools
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from lifelong.common.backoff import exponential, wait_seconds
from lifelong.common.codec import Codec, decode, decode_map, encode
from lifelong.common.envelope import CONTROL_KIND, MAX_INT, Envelope, Op
from lifelong.common.errors import InvalidBody, LifelongError, NotConnected, PayloadTooLarge, ProtocolError
from lifelong.common.messages import (
    MAX_PARTS,
    Applied,
    AppliedAck,
    Hello,
    ItemRefused,
    LogAnswer,
    LogRequest,
    OutboxState,
    PartGatherer,
    PartRefused,
    PartSet,
    Presence,
    ResourceRef,
    SeqAck,
    Sync,
    Upsert,
    parse_object,
    split_into_parts,
)
from lifelong.common.topics import Topics
from lifelong.edge.config import AGENT
from lifelong.edge.db import Store, rv_newer, rv_older
from lifelong.edge.outbox import Outbox

log = logging.getLogger("lifelong.edge.session")

JOB_KIND = "LifelongLearningJob"
Publish = Callable[[str, bytes, bool], None]  # (topic, payload, retain); raises NotConnected
HELLO_RETRY = 10.0
"""Seconds to wait for a ``sync`` answering a hello before saying hello again (then doubling)."""
HELLO_RETRY_CAP = 300.0
"""The longest wait between two unanswered hellos, in seconds."""
LOG_RETRY_FLOOR = 1024
"""A log answer over the payload limit is read again with fewer bytes, down to this many."""
LOGGED_ITEMS = 10
"""Refused items of one list body logged one by one; the rest are summed up in one line."""
BURST_MAX = 1000
"""The most messages the session applies in one transaction (and acknowledges in one ``ack``)."""
PART_MARGIN = 64
"""Bytes of the payload limit a hello's part is measured without: its envelope id (a counter)
may grow by a digit between measuring and sending."""
Key = tuple[str, str, str]


class Session:
    """Protocol logic of the LC side, independent of how bytes reach the broker.

    ``publish`` is the bus client's publish; ``on_change`` is called (on the session thread)
    after any downstream change was stored; ``on_job_deleted(ns, name)`` after a job delete.
    """

    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        *,
        node: str,
        topics: Topics,
        codec: Codec,
        max_payload: int,
        publish: Publish | None = None,
        on_change: Callable[[], None] = lambda: None,
        on_job_deleted: Callable[[str, str], None] = lambda ns, name: None,
        on_log_request: Callable[[str, LogRequest], LogAnswer] | None = None,
        hello_retry: float = HELLO_RETRY,
        hello_retry_cap: float = HELLO_RETRY_CAP,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.node = node
        self.topics = topics
        self.codec = codec
        self.max_payload = max_payload
        self.publish = publish
        self.on_change = on_change
        self.on_job_deleted = on_job_deleted
        self.on_log_request = on_log_request
        self.log_requests = 0  # log requests answered
        self._log_requests: list[Envelope] = []  # of the batch being applied
        self.boot = uuid.uuid4().hex
        # Envelope ids: this boot's random id and a counter (unique as uuid4 is, without a
        # getrandom call per message: that was a quarter of the publisher's time in py-spy).
        self._ids = itertools.count(1)
        self.commits = 0  # transactions the session committed (one per burst of messages)
        self.connected = threading.Event()
        self.connects = 0
        self.hellos = 0
        self.gm_online_hellos = 0  # hellos sent because the GM's presence turned online
        self.hello_retries = 0  # hellos sent again because no sync answered the last one
        self.hello_parts = 0  # messages the hellos took (more than hellos when sent in parts)
        self._sync_parts: PartGatherer[ResourceRef | ItemRefused] = PartGatherer("sync")
        self.hello_retry = hello_retry
        self.hello_retry_cap = hello_retry_cap
        self._clock = clock
        # the wait before the n-th hello of a row is sent again: hello_retry doubling, capped
        self._hello_backoff = exponential(hello_retry, hello_retry_cap)
        self._hello_attempt = 1  # hellos sent since the last sync (or connect), this one included
        self._hello_due: float | None = None  # when to say hello again if no sync arrives
        self._gm_presence_id: str | None = None  # id of the last GM presence seen
        self._gm_state: str | None = None  # its state: online, offline, or None (none seen)
        self.downstream = {"applied": 0, "stale": 0, "invalid": 0}  # and "failed" once one failed
        self.rejected: dict[str, int] = {}  # refused messages and list items, by reason
        self._acks: dict[str, list[int]] = {}
        self._storage_error: str | None = None  # the last batch's database error, until one commits
        self._queue: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- wire helpers ---------------------------------------------------------------------------
    def next_id(self) -> str:
        """A new envelope id: unique per message (this boot's id and a counter)."""
        return f"{self.boot}{next(self._ids):x}"

    def _envelope(
        self, kind: str, op: Op, body: dict[str, Any] | None, *, max_payload: int | None = None, **kw: Any
    ) -> bytes:
        env = Envelope.new(node=self.node, kind=kind, op=op, body=body, id=self.next_id(), **kw)
        return encode(env, self.codec, max_payload=max_payload or self.max_payload)

    def presence_payload(self, state: Literal["online", "offline"]) -> bytes:
        return self._envelope(CONTROL_KIND, Op.PRESENCE, Presence(state=state, agent=AGENT).to_body())

    def _refuse(self, reason: str, what: str, detail: str, *, resource: bool = False) -> None:
        """Count and log one refused message or list item (``resource``: a downstream resource
        message, also counted as ``invalid`` among the downstream outcomes)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if resource:
            self.downstream["invalid"] += 1
        log.warning("%s refused (%s): %s", what, reason, detail[:500])

    def _refuse_items(self, what: str, refused: list[ItemRefused]) -> None:
        for item in refused[:LOGGED_ITEMS]:
            self._refuse("invalid", f"{what} item {item.key or item.path}", str(item))
        rest = refused[LOGGED_ITEMS:]
        if rest:
            self.rejected["invalid"] = self.rejected.get("invalid", 0) + len(rest)
            log.warning("%s: %d more items refused (invalid), the first %s", what, len(rest), rest[0])

    def _send(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        if self.publish is None:
            return False
        try:
            self.publish(topic, payload, retain)
        except NotConnected:
            return False
        except LifelongError as exc:
            log.warning("publish on %s failed: %s", topic, exc)
            return False
        return True

    # -- bus callbacks (network thread: enqueue only) -------------------------------------------
    def handle_connect(self, first: bool) -> None:
        self._queue.put(("connect", first, None))

    def handle_disconnect(self, *args: Any, **kwargs: Any) -> None:
        self.connected.clear()

    def handle_message(self, topic: str, payload: bytes, retained: bool = False) -> None:
        self._queue.put(("down", topic, payload))

    def handle_gm_presence(self, topic: str, payload: bytes, retained: bool = False) -> None:
        self._queue.put(("gm", payload, retained))

    def queued(self) -> int:
        """Messages the network thread handed off that the session has not applied yet."""
        return self._queue.qsize()

    # -- threads --------------------------------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._session_loop, "lc-session"), (self._publisher_loop, "lc-publisher")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(("stop", None, None))
        self.outbox.wakeup.set()
        for t in self._threads:
            t.join(10)

    def _session_loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=self._until_hello_due())
            except queue.Empty:
                self._retry_hello()
                continue
            self._process(item)

    def run_pending(self) -> None:
        """Handle everything queued so far, now, on the calling thread (for tests and tools
        that drive a session without its thread); then say hello again if one is due."""
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            self._retry_hello()
            return
        self._process(item)

    def _process(self, item: tuple[str, Any, Any]) -> None:
        """One burst: ``item`` and whatever else is queued (up to ``BURST_MAX``), in one
        transaction; then the burst's log requests are answered (whether or not it committed)."""
        batch = [item]
        while len(batch) < BURST_MAX:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._log_requests = []
        try:
            self._apply_batch(batch)
        finally:
            self._answer_logs()

    def _apply_batch(self, batch: list[tuple[str, Any, Any]]) -> None:
        applied: list[Applied] = []
        self._acks = {}
        changed = False
        try:
            if any(what == "connect" for what, _, _ in batch):
                self.store.db.sync()  # its hello names the outbox as it is on disk (hello_body)
            # One transaction (one fsync) per batch; its acks go out only after the commit. A
            # batch of the GM's acks alone only forgets acknowledged reports: it need not wait
            # for the disk (lost in a power cut, they are sent again and the GM finds them
            # applied; docs/reliability.md).
            with self.store.tx(lazy=all(self._is_gm_ack(what, a, b) for what, a, b in batch)):
                for what, a, b in batch:
                    done: list[Applied] = []  # what this item acknowledges, once it is in
                    try:
                        # A savepoint per item: one that fails rolls back alone, unacknowledged
                        # (the GM resends it), and the rest of the burst goes on.
                        with self.store.tx():
                            if what == "connect":
                                self._on_connected(bool(a))
                            elif what == "down":
                                changed |= self._on_down(str(a), b, done)
                            elif what == "gm":
                                self._on_gm_presence(a, bool(b))
                    except sqlite3.OperationalError:
                        raise  # the whole batch waits for the database (below)
                    except Exception:
                        if what == "down":
                            self.downstream["failed"] = self.downstream.get("failed", 0) + 1
                        log.exception("session: handling %s %s failed (not acknowledged)", what, a)
                    else:
                        applied.extend(done)
                for epoch, seqs in self._acks.items():
                    try:
                        self.outbox.ack(epoch, seqs)
                    except sqlite3.OperationalError:
                        raise
                    except Exception:
                        log.exception(
                            "session: deleting %d acknowledged reports of epoch %s failed", len(seqs), epoch
                        )
        except sqlite3.OperationalError as exc:  # disk full, read-only, I/O error ...
            if str(exc) != self._storage_error:
                log.error(
                    "local database %s cannot be written (%s): %d downstream messages not "
                    "stored nor acknowledged, the GM resends them",
                    self.store.path,
                    exc,
                    len(batch),
                )
            self._storage_error = str(exc)
            return
        except Exception:
            log.exception("session: committing a batch of %d messages failed", len(batch))
            return  # nothing acknowledged: the GM resends
        self.commits += 1
        if self._storage_error is not None and (applied or self._acks):
            log.warning("local database %s is writable again", self.store.path)
            self._storage_error = None
        if applied:
            payload = self._envelope(CONTROL_KIND, Op.ACK, AppliedAck(applied=applied).to_body())
            self._send(self.topics.up_ctl(self.node), payload)
        if changed:
            self.on_change()
        self._retry_hello()

    def _is_gm_ack(self, what: str, topic: Any, payload: Any) -> bool:
        """Is this queued item an ``ack`` of the GM on this node's control topic? (A peek at the
        raw map; the item is decoded and checked properly when it is handled.)"""
        if what != "down" or topic != self.topics.down_ctl(self.node):
            return False
        try:
            return decode_map(payload, max_payload=self.max_payload).get("op") == Op.ACK.value
        except ProtocolError:
            return False

    def _until_hello_due(self) -> float | None:
        if self._hello_due is None:
            return None
        return max(0.0, self._hello_due - self._clock())

    def _retry_hello(self) -> None:
        """Say hello again if the last one is still unanswered at its deadline."""
        if self._hello_due is None or self._clock() < self._hello_due:
            return
        if not self.connected.is_set() or self._gm_state == "offline":
            # the next connect, or the GM's presence turning online, brings a fresh hello
            self._hello_due = None
            return
        self._hello_attempt += 1
        log.info("no sync answered the last hello; saying hello again (next wait %.0f s)", self._hello_wait())
        self.hello_retries += 1
        self.send_hello(retry=True)

    def _hello_wait(self) -> float:
        """How long the hello just sent may wait for its sync: tenacity's exponential wait."""
        return wait_seconds(self._hello_backoff, self._hello_attempt)

    def _on_connected(self, first: bool) -> None:
        self.connects += 1
        # Hello first: the GM learns the outbox epoch from it, so no report may precede it.
        self._send(self.topics.node_presence(self.node), self.presence_payload("online"), True)
        self.send_hello()
        self.outbox.reset_inflight()
        self.connected.set()
        log.info("connected (%s); hello sent", "first" if first else "reconnect")

    def _on_gm_presence(self, payload: bytes, retained: bool) -> None:
        """The GM's presence changed. A GM that (re)connects knows this node's epoch only from a
        hello: say hello again and make every unacknowledged report due at once.

        Each GM connect publishes a presence with a new message id. The retained copy that
        arrives with our own (re)subscription is one we already answered with the hello sent
        on connect, so the first presence seen, when retained, is only remembered. Only a live
        ``offline`` pauses the hello retries.
        """
        if not payload:
            return  # a cleared retained message
        try:
            env = decode(payload, max_payload=self.max_payload)
            if env.node != "gm" or env.op is not Op.PRESENCE:
                raise InvalidBody("GM presence", [("", f"from {env.node!r}, op {env.op.value}")])
            presence = Presence.parse(env.body)
        except ProtocolError as exc:
            self._refuse(exc.reason, "GM presence", str(exc))
            return
        first, new = self._gm_presence_id is None, env.id != self._gm_presence_id
        self._gm_presence_id = env.id
        if not retained:
            # Only a live presence says the GM is gone now. A retained copy may be stale: a
            # clustered broker keeps one per node, so a GM's will left on another node than the
            # one its successor uses stays there (docs/protocol.md, "What the protocol needs of
            # the broker"); waiting on it would stop the hello retries for good.
            self._gm_state = presence.state
        if presence.state != "online" or not new or (first and retained):
            return
        if not self.connected.is_set():
            return  # the hello of our own connect follows
        self.send_hello()
        self.gm_online_hellos += 1
        self.outbox.reset_inflight()
        log.info("GM presence turned online (%s); hello sent, unacknowledged reports due", presence.agent)

    def send_hello(self, *, retry: bool = False) -> None:
        """Send a hello (in parts if one message cannot hold it); a sync must answer it within
        the current wait or it is sent again."""
        if not retry:
            self._hello_attempt = 1
        self._hello_due = self._clock() + self._hello_wait()
        try:
            payloads = self.hello_payloads()
        except PayloadTooLarge as exc:
            self._refuse("too_large", "hello", f"it cannot be sent, even in parts: {exc}")
            return
        topic = self.topics.up_ctl(self.node)
        if all(self._send(topic, payload) for payload in payloads):  # stops at the first failure
            self.hellos += 1
            self.hello_parts += len(payloads)

    def hello_payloads(self) -> list[bytes]:
        """The hello as encoded messages: one if it fits the payload limit, else parts sharing
        a ``helloId``, each with a slice of the resources held (docs/protocol.md, ``hello``). The
        part fields are always given (``parts`` 1 for a whole hello), telling the GM that this LC
        reads a sync in parts. Raises ``PayloadTooLarge`` past ``MAX_PARTS`` parts."""
        header, resources = self._hello_content()
        hello_id = self.next_id()

        def body(chunk: list[dict[str, str]], part: int, parts: int) -> dict[str, Any]:
            whole = header.model_copy(update={"hello_id": hello_id, "part": part, "parts": parts})
            return {**whole.to_body(), "resources": chunk}

        def size(chunk: list[dict[str, str]]) -> int:  # the largest part numbers: no part is larger
            body_ = body(chunk, MAX_PARTS - 1, MAX_PARTS)
            return len(self._envelope(CONTROL_KIND, Op.HELLO, body_, max_payload=MAX_INT))

        slices = split_into_parts(resources, size, self.max_payload - PART_MARGIN)
        return [
            self._envelope(CONTROL_KIND, Op.HELLO, body(chunk, index, len(slices)))
            for index, chunk in enumerate(slices)
        ]

    def _hello_content(self) -> tuple[Hello, list[dict[str, str]]]:
        """The hello's header (outbox epoch and state; no resources) and every resource held (a
        held row the model refuses, which only a damaged database holds, is logged, counted and
        left out)."""
        # The outbox state told to the GM must not rest on a lazy commit (acknowledged reports
        # forgotten): the GM forgets its records below lowSeq, so a power cut after this hello
        # could otherwise bring back reports the GM no longer knows it applied. (Inside a batch
        # this does nothing: a batch with a connect syncs before it begins.)
        self.store.db.sync()
        resources: list[dict[str, str]] = []
        for row in self.store.held():
            try:
                ref = ResourceRef.parse(row)
            except InvalidBody as exc:
                key = "/".join(str(row.get(k)) for k in ("kind", "ns", "name"))
                self._refuse("invalid", f"held resource {key} (left out of the hello)", str(exc))
                continue
            resources.append({"kind": ref.kind, "ns": ref.ns, "name": ref.name, "rv": ref.rv})
        header = Hello(
            agent=AGENT,
            epoch=self.outbox.epoch,
            boot=self.boot,
            resources=[],
            outbox=OutboxState.parse(self.outbox.hello_state()),
        )
        return header, resources

    # -- downstream -----------------------------------------------------------------------------
    def _on_down(self, topic: str, payload: bytes, applied: list[Applied]) -> bool:
        """Check one downstream message, then apply it; True if something stored changed."""
        try:
            env = decode(payload, max_payload=self.max_payload)
            parsed = self.topics.parse(topic)
        except ProtocolError as exc:
            self._refuse(exc.reason, f"downstream message on {topic}", str(exc), resource=True)
            return False
        if env.node != self.node or parsed.node != self.node:
            self._refuse(
                "identity", f"downstream message on {topic}", f"names node {env.node!r}", resource=True
            )
            return False
        if parsed.is_control:
            return self._on_control(env)
        if (parsed.kind, parsed.ns, parsed.name) != env.key:
            detail = f"the envelope is about {'/'.join(env.key)}"
            self._refuse("topic", f"downstream message on {topic}", detail, resource=True)
            return False
        if env.op is Op.UPSERT:
            return self._upsert(env, applied)
        if env.op is Op.DELETE:
            return self._delete(env, applied)
        self._refuse(
            "op", f"downstream message on {topic}", f"op {env.op.value} is not understood", resource=True
        )
        return False

    def _upsert(self, env: Envelope, applied: list[Applied]) -> bool:
        """Store the object, parsed into its model, if its version is newer than the one held.

        An object the models refuse is never stored (what is held stays); the message is still
        acknowledged, with ``refused`` saying why, so the GM stops resending it.
        """
        kind, ns, name = env.key
        what = f"upsert of {kind} {ns}/{name} rv={env.rv}"
        if env.rv is None:
            self._refuse("invalid", what, "the envelope has no rv", resource=True)
            return False
        held = self.store.held_rv(kind, ns, name)
        floor = held if held is not None else self.store.tombstone_rv(kind, ns, name)
        if not rv_newer(env.rv, floor):
            applied.append(Applied(kind=kind, ns=ns, name=name, rv=env.rv, op="upsert"))
            self.downstream["stale"] += 1
            log.debug("upsert %s %s/%s rv=%s is stale (held %s)", kind, ns, name, env.rv, floor)
            return False
        try:
            given = Upsert.parse(env.body).object
            obj = parse_object(given)
            if obj.key != env.key:
                names = "/".join(obj.key)
                raise InvalidBody(
                    "upsert body", [("object", f"is {names}, the message is about {kind}/{ns}/{name}")]
                )
        except InvalidBody as exc:
            self._refuse("invalid", what, str(exc), resource=True)
            applied.append(
                Applied(kind=kind, ns=ns, name=name, rv=env.rv, op="upsert", refused=str(exc)[:300])
            )
            return False
        applied.append(Applied(kind=kind, ns=ns, name=name, rv=env.rv, op="upsert"))
        # Stored as the GM sent it, now that the model took it (dumping the model again would
        # cost a third of the parse and give the same object, nulls aside).
        self.store.put_resource(kind, ns, name, env.rv, given)
        self.downstream["applied"] += 1
        log.info("%s %s/%s rv=%s stored", kind, ns, name, env.rv)
        return True

    def _delete(self, env: Envelope, applied: list[Applied]) -> bool:
        kind, ns, name = env.key
        applied.append(Applied(kind=kind, ns=ns, name=name, rv=env.rv, op="delete"))
        held = self.store.held_rv(kind, ns, name)
        if held is None or (env.rv is not None and rv_older(env.rv, held)):
            self.downstream["stale"] += 1
            return False
        self.forget(kind, ns, name, env.rv or held)
        self.downstream["applied"] += 1
        return True

    def forget(self, kind: str, ns: str, name: str, rv: str | None) -> None:
        """Drop a resource (and, for a job, its Worker objects); workers stop at the next reconcile."""
        with self.store.tx():
            self.store.delete_resource(kind, ns, name, rv)
            if kind == JOB_KIND:
                for _k, wns, wname, wrv, obj in self.store.resources("Worker"):
                    if wns == ns and (obj.get("spec") or {}).get("job") == name:
                        self.store.delete_resource("Worker", wns, wname, wrv)
        log.info("%s %s/%s deleted", kind, ns, name)
        if kind == JOB_KIND:
            self.on_job_deleted(ns, name)

    def _on_control(self, env: Envelope) -> bool:
        try:
            if env.op is Op.ACK:
                self._on_ack(env)
                return False
            if env.op is Op.SYNC:
                return self._on_sync(env)
            if env.op is Op.LOG:
                self._log_requests.append(env)  # answered after the batch: no file reads in its transaction
                return False
        except InvalidBody as exc:
            self._refuse(exc.reason, f"{env.op.value} on down/_ctl", str(exc))
            return False
        self._refuse("op", "message on down/_ctl", f"op {env.op.value} is not understood", resource=True)
        return False

    def _on_ack(self, env: Envelope) -> None:
        """The GM applied these reports: they leave the outbox when the batch commits."""
        ack, refused = SeqAck.parse_lenient(env.body)
        self._refuse_items("ack", refused)
        self._acks.setdefault(ack.epoch, []).extend(ack.seqs)

    def _on_sync(self, env: Envelope) -> bool:
        """A whole sync, or a part of one: applied (``_apply_sync``) once every part is here, and
        only then does it answer the hello. A part that cannot join its set is refused with its
        reason and changes nothing."""
        sync, refused = Sync.parse_lenient(env.body)
        items: list[ResourceRef | ItemRefused] = [*sync.resources, *refused]
        gathered: list[ResourceRef | ItemRefused] | None = items
        if sync.sync_id is None:
            self._drop_sync_parts(f"a whole sync ({env.id}) came")
        else:
            assert sync.part is not None and sync.parts is not None  # the model checks they go together
            try:
                gathered, dropped = self._sync_parts.add(
                    sync.sync_id, sync.part, sync.parts, items, now=self._clock()
                )
            except PartRefused as exc:
                self._refuse(exc.reason, "sync part", str(exc))
                return False
            if dropped is not None:
                self._dropped_sync(dropped, f"sync {sync.sync_id} began")
        self._refuse_items("sync", refused)
        if gathered is None:
            return False  # the rest follows; the hello is not answered until it has
        self._hello_due = None  # the hello is answered
        return self._apply_sync(
            [i for i in gathered if isinstance(i, ResourceRef)],
            [i for i in gathered if isinstance(i, ItemRefused)],
        )

    def _drop_sync_parts(self, why: str) -> None:
        dropped = self._sync_parts.drop()
        if dropped is not None:
            self._dropped_sync(dropped, why)

    def _dropped_sync(self, dropped: PartSet[Any], why: str) -> None:
        detail = f"{len(dropped.received)} of its {dropped.parts} parts had come when {why}; dropped"
        self._refuse("incomplete_sync", f"sync {dropped.id}", detail)

    def _apply_sync(self, resources: list[ResourceRef], refused: list[ItemRefused]) -> bool:
        """Drop what the GM's list does not name. A refused item is skipped; what it might have
        named (any held resource whose kind, namespace and name it does not contradict) is kept."""
        wanted = {ref.key for ref in resources}
        changed = False
        for res in self.store.held():
            key: Key = (res["kind"], res["ns"], res["name"])
            if key in wanted or any(_could_name(item.item, key) for item in refused):
                continue
            try:
                if self.store.held_rv(*key) is None:
                    continue  # already gone with its job
                self.forget(*key, None)
                changed = True
            except sqlite3.OperationalError:
                raise  # the whole batch waits for the database
            except Exception:
                self.rejected["sync_drop_failed"] = self.rejected.get("sync_drop_failed", 0) + 1
                log.exception("sync: dropping %s failed; the next sync tries again", "/".join(key))
        return changed

    # -- worker logs ----------------------------------------------------------------------------
    def _answer_logs(self) -> None:
        requests, self._log_requests = self._log_requests, []
        for env in requests:
            try:
                self._answer_log(env)
            except Exception:
                log.exception("answering log request %s failed", env.id)

    def _answer_log(self, env: Envelope) -> None:
        """Answer one ``log`` request on ``up/_ctl``. A request the model refuses gets an
        ``invalid`` answer; an answer over the payload limit is read again with a quarter of the
        bytes, down to ``LOG_RETRY_FLOOR``, and is then a ``too_large`` answer."""
        try:
            req = LogRequest.parse(env.body)
        except InvalidBody as exc:
            self._refuse("invalid", "log request", str(exc))
            self._send_log(LogAnswer(request=env.id, error=str(exc)[:1000], reason="invalid"))
            return
        answer = self._log_answer(env.id, req)
        limit = req.max_bytes
        while not self._send_log(answer):
            if limit <= LOG_RETRY_FLOOR:
                detail = f"the answer is over the payload limit of {self.max_payload} bytes"
                self._send_log(
                    LogAnswer(request=env.id, ns=req.ns, worker=req.worker, error=detail, reason="too_large")
                )
                return
            limit = max(LOG_RETRY_FLOOR, limit // 4)
            answer = self._log_answer(env.id, req.model_copy(update={"max_bytes": limit}))

    def _send_log(self, answer: LogAnswer) -> bool:
        """Publish one log answer; False if it is over the payload limit (nothing sent)."""
        try:
            payload = self._envelope(CONTROL_KIND, Op.LOG, answer.to_body())
        except PayloadTooLarge:
            return False
        self.log_requests += 1
        self._send(self.topics.up_ctl(self.node), payload)
        return True

    def _log_answer(self, request_id: str, req: LogRequest) -> LogAnswer:
        if self.on_log_request is None:
            error = f"node {self.node} keeps no worker logs"
            return LogAnswer(
                request=request_id, ns=req.ns, worker=req.worker, error=error, reason="unknown_worker"
            )
        return self.on_log_request(request_id, req)

    # -- upstream -------------------------------------------------------------------------------
    def _publisher_loop(self) -> None:
        while not self._stop.is_set():
            self.outbox.wakeup.wait(timeout=min(1.0, self.outbox.ack_timeout))
            self.outbox.wakeup.clear()
            if self._stop.is_set():
                return
            if not self.connected.is_set():
                continue
            try:
                self._publish_due()
            except Exception:
                log.exception("publisher failed")

    def _publish_due(self) -> None:
        while not self._stop.is_set() and self.connected.is_set():
            resets = self.outbox.resets
            due = self.outbox.due()
            if not due:
                return
            for entry in due:
                env = Envelope.new(
                    id=self.next_id(),
                    node=self.node,
                    kind=entry.kind,
                    ns=entry.ns,
                    name=entry.name,
                    op=Op.REPORT,
                    seq=entry.seq,
                    body=entry.body,
                    ts=entry.ts,
                )
                try:
                    payload = encode(env, self.codec, max_payload=self.max_payload)
                except PayloadTooLarge as exc:
                    log.error("report seq %d dropped, it can never be sent: %s", entry.seq, exc)
                    self.outbox.drop_unsendable(entry.seq)
                    continue
                topic = self.topics.up(self.node, entry.kind, entry.ns, entry.name)
                if not self.outbox.mark_sent(entry.seq, resets=resets):
                    break  # a reconnect made every unacknowledged report due again: list anew
                if self.publish is None or not self._send(topic, payload):
                    self.outbox.unmark(entry.seq)
                    return


def _could_name(item: Any, key: Key) -> bool:
    """Whether a refused sync item may have named ``key``: none of its readable kind, namespace
    and name contradicts it (a field that is missing or not a string could be anything)."""
    if not isinstance(item, dict):
        return True
    fields = zip(("kind", "ns", "name"), key, strict=True)
    return all(not isinstance(item.get(f), str) or item.get(f) == v for f, v in fields)
