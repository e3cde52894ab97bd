"""The GM's intake from the bus: checks every message from the edge, applies it exactly once, acks.

Who calls it: the bus client's network thread calls ``on_message`` for everything under
``{p}/node/+/up/#`` and ``{p}/node/+/presence``. That thread only decodes, checks and hands off:
it does no database work and takes no lock a worker holds for long (only the executor's queue
locks and the ack batches' lock, each held for a few dict operations). Checks come first and
are cheap:

1. the topic parses (``topic``), the payload is within the size limit (``too_large``), decodes
   (``decode``) and speaks our protocol version (``version``);
2. the envelope's node equals the topic's node (``identity``), its kind/ns/name equal the
   topic's (``topic_mismatch``), its operation fits the topic (``op``), a report has a ``seq``
   (``schema``), its kind has a controller (``unknown_kind``), and its node has said hello so
   its outbox epoch is known (``unknown_node``: not acknowledged, the LC resends after hello);
3. the body parses into its model (``lifelong.common.messages``: ``Presence``, ``Hello``,
   ``AppliedAck``, and each kind's report model, which its controller names in
   ``parse_report``), once, here (``invalid``). This costs a few microseconds (about half of
   decoding the envelope for a report, 1.4 us per resource of a hello), and the network thread
   needs fields of it anyway: a hello's epoch, a Worker report's job (its key). Everything
   after this point gets models; no controller reads a body's dict. The refused items of a
   hello's or an ack's list are counted one by one and skipped; the rest goes on.

A hello in parts (``helloId``, ``part``, ``parts``) is gathered here, on the network thread,
by ``HelloParts`` (one set per node; bounded; dropped after ``HELLO_PARTS_SECONDS``) and handed on
as one whole hello once every part is in; a part that cannot join is refused with its reason
(``too_many_parts``, ``duplicate_part``, ``part_mismatch``, ``unknown_hello``, ``busy``).

Presence of a node that never said hello (not in ``_epochs``) is refused (``unknown_node``):
nothing is kept for such a name. Otherwise a live ``online`` marks the node online,
``offline`` (or the will) offline. A *retained* ``online`` (the broker's copy, delivered when
the GM subscribes) does not: it may be older than this GM, whose start marked every node
offline; the node is online again once it speaks (the LC answers the GM's ``online`` presence
with a hello). A retained ``offline`` is applied.

A rejected message is counted by reason and logged, never applied, and never stops the GM. The
first rejection of each reason from a node (since its last hello) is logged at WARNING with
its key, the others at DEBUG, so a node resending garbage does not flood the log. A report
whose body is refused is acknowledged all the same (recorded like an applied one): resending
the same body can never make it valid, and the LC's outbox would resend it forever
(docs/protocol.md); a valid report is still acknowledged only once its effect is stored.

Bounds (docs/reliability.md, "Bounds"): at most ``MAX_NODES`` nodes (a hello from one more is
refused, ``too_many_nodes``); at most ``MAX_QUEUED_PER_NODE`` reports of one node waiting in the
executor (``busy``, not acknowledged, so resent); rejections from names that never said hello
logged once a minute per reason, whatever the number of names (``SPELL_SECONDS``).

Accepted work is handed to the keyed executor, ordered (``submit``, never collapsed): reports
under the key of the object they change (in order per object); presence, hello and the LC's
acks of downstream messages under ``("node", node)``, so a node's bookkeeping writes stay in
the order they arrived. The one fact needed at once is a node's outbox epoch (every report is
deduplicated by it): the network thread keeps it in memory, loaded from the bookkeeping when
the intake is made and replaced by every hello before its write is handed off. A report that
follows a hello is applied under the new epoch even if the hello's write has not run yet; the
write (which forgets applied seqs of other epochs) keeps the new epoch's records.

Applying a report: skip it if
(node, epoch, seq) was applied before, else let the kind's controller apply it durably, record
(node, epoch, seq), and only then acknowledge it. A report that can never apply
(``ReportRejected``) is counted and acknowledged; a store failure is not acknowledged (resent),
and neither is a report its controller defers (``ReportDeferred``: the knowledge base cannot be
reached, or this GM has none), which is counted by reason in
``lifelong_gm_upstream_deferred_total`` and logged once a minute per reason.

Reports in bursts (a SQLite store, and a kind whose controller says ``bursts``: its
``apply_report`` writes only the store and the bookkeeping; the knowledge base's kinds do not):
each report is still submitted under its object's key, and a worker thread takes the reports
queued next to each other on it (``KeyedExecutor``'s bursts, at most ``BURST_MAX``) and applies
them in one transaction of the bookkeeping and one of the store: each report in a savepoint of
both (a report that raises rolls back alone and is counted as it would be alone: rejected and
acknowledged, deferred or failed and not), its (node, epoch, seq) recorded in the same
transaction, the store committed first (its effect), then the bookkeeping (the records). Only
after both commits are the burst's seqs acknowledged, one ``ack`` per (node, epoch) (at most
``ACK_BATCH`` seqs each). Idle, a burst is one report, acknowledged as soon as it is stored,
with no hop to another task. A GM killed before the store's commit loses the burst and
acknowledged none of it (the LC resends all); killed between the two commits, the reports are
resent and the controllers find them applied (as below).

Acknowledgements of other reports (the knowledge base's kinds, a Kubernetes store, a refused
body) are coalesced per node: the first seq applied for a node queues one flush
task on the executor (key ``("ack", node)``); every seq applied before that task runs joins
it. The flush records the batch's (node, epoch, seq) in one transaction, then sends one
``ack`` (at most ``ACK_BATCH`` seqs per message). Idle, a report is acknowledged as soon as it
is stored; under a burst, one ack covers every report stored while the flush waited its turn.
A copy of a report arriving while its seq waits in a batch is a duplicate, as one arriving
after it was recorded. A GM that dies between applying a report and recording it gets the
report again and the controller finds it a duplicate (conditions are only appended by the
state machine, which ignores an event it has already applied).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from lifelong.cloud.controllers.base import Controller, Outcome, ReportDeferred, ReportRejected
from lifelong.cloud.controllers.registry import Registry
from lifelong.cloud.delivery import Delivery, HelloPlan
from lifelong.cloud.gmstate import GMState
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.workqueue import KeyedExecutor, Task
from lifelong.common.codec import decode
from lifelong.common.envelope import Envelope, Op
from lifelong.common.errors import InvalidBody, ProtocolError
from lifelong.common.logonce import LogOnce
from lifelong.common.messages import (
    Applied,
    AppliedAck,
    Hello,
    ItemRefused,
    PartGatherer,
    PartRefused,
    PartSet,
    Presence,
    ResourceRef,
)
from lifelong.common.sqlite import Database
from lifelong.common.topics import Direction, Topic, Topics

log = logging.getLogger(__name__)

ACK_BATCH = 1000
"""The most seqs one ``ack`` message carries (about 5 bytes each in msgpack)."""
BURST_MAX = 256
"""The most reports applied in one transaction: the databases' locks are held for the whole
burst (a few milliseconds at this size), so that the API and the delivery wait no longer."""
MAX_NODES = 10_000
"""Nodes the GM keeps (``nodes`` rows, epochs in memory): a hello from one more is refused
(``too_many_nodes``, not acknowledged). ``lifelong delete node`` makes room."""
MAX_QUEUED_PER_NODE = 10_000
"""Reports of one node handed to the executor and not applied yet: beyond, a report is refused
(``busy``, not acknowledged: the LC resends it after its ack timeout). A well-behaved LC has at
most its outbox window (200) in flight."""
HELLO_PARTS_SECONDS = 30.0
"""A hello in parts still incomplete this long after its first part is dropped (never answered;
the LC, answered by no sync, says hello again after 10 s)."""
MAX_OPEN_HELLOS = 1_000
"""Hellos in parts gathered at once, all nodes together: a part opening one more is refused
(``busy``)."""
MAX_GATHERED_RESOURCES = 500_000
"""Resources held in incomplete hellos, all nodes together: a part beyond is refused (``busy``)."""
SPELL_SECONDS = 60.0
"""Rejections of messages from node names that never said hello share one log scope: one
WARNING per reason per this many seconds (with the count since), however many names. The same
for records a bound of the bookkeeping forgot."""


class Intake:
    def __init__(
        self,
        state: GMState,
        topics: Topics,
        *,
        registry: Registry,
        delivery: Delivery,
        executor: KeyedExecutor,
        metrics: GMMetrics,
        max_payload: int | None = None,
        max_nodes: int = MAX_NODES,
        max_queued_per_node: int = MAX_QUEUED_PER_NODE,
        clock: Callable[[], float] = time.monotonic,
        store_db: Database | None = None,
        burst_max: int = BURST_MAX,
    ) -> None:
        self.state = state
        self.topics = topics
        self.registry = registry
        self.delivery = delivery
        self.executor = executor
        self.metrics = metrics
        self.max_payload = max_payload
        self.max_nodes = max_nodes
        self.max_queued_per_node = max_queued_per_node
        self.clock = clock
        self.store_db = store_db
        """The SQLite store's database: reports of kinds that burst are applied in bursts (None:
        one by one, as on a Kubernetes store)."""
        self._burst = _Burst(self.apply_burst, burst_max)
        self._node_burst = _Burst(self.apply_node_burst, burst_max)
        self._logged = LogOnce()  # (node, reason) rejections logged at WARNING since its hello
        # key -> (when last logged, how many since): names that never said hello, one scope
        self._spells: dict[str, tuple[float, int]] = {}
        self._queued_lock = threading.Lock()
        self._queued: dict[str, int] = {}  # node -> reports submitted, not run yet (bounded above)
        self.on_log: Callable[[str, Envelope], None] | None = None
        """Gets each ``log`` answer on ``up/_ctl`` (``cloud/logs.py``), on the network thread."""
        self._ack_lock = threading.Lock()
        self._acks: dict[tuple[str, str], list[int]] = {}  # (node, epoch) -> applied, not yet acked
        self._acking: dict[tuple[str, str], set[int]] = {}  # the same seqs, for look-ups
        # node -> outbox epoch of its last hello. Read and written by the network thread only
        # (loaded here, before it runs), so it needs no lock and no database read per report.
        self._epochs: dict[str, str] = {n.node: n.epoch for n in state.nodes() if n.epoch}
        self.hello_parts = HelloParts(self._hello_dropped, known=self._epochs.__contains__, clock=clock)
        """Hellos in parts being gathered (network thread only, as ``_epochs``)."""
        state.on_forgotten = self._forgotten

    def _forgotten(self, what: str, reason: str, count: int) -> None:
        """A bound of the bookkeeping forgot ``count`` records (``cloud/gmstate.py``): counted."""
        if what == "applied":
            self.metrics.applied_pruned.labels(reason=reason).inc(count)
        else:
            self.metrics.worker_info_evicted.inc(count)
        first, since = self._spell(f"forgot {what} {reason}", count)
        if first:
            more = f" ({since} more since the last such line)" if since else ""
            log.warning("forgot %d %s records over their %s bound%s", count, what, reason, more)

    def filters(self) -> list[str]:
        return [self.topics.all_up_filter(), self.topics.all_presence_filter()]

    def _reject(self, reason: str, where: str, message: str, node: str | None = None, count: int = 1) -> None:
        """Count ``count`` rejections; log the first per (node, reason) since the node's hello.

        A node name that never said hello (not in ``_epochs``) keeps nothing here: such names
        share one scope, logged once per reason per ``SPELL_SECONDS`` (a flood of
        made-up names is one line a minute, not one per name)."""
        self.metrics.upstream_rejected.labels(reason=reason).inc(count)
        if node and node in self._epochs:
            first = self._logged.first(node, reason)
            suffix = ""
        else:
            first, since = self._spell(reason, count)
            suffix = (
                f" ({since} more from nodes that never said hello since the last such line)" if since else ""
            )
        level = logging.WARNING if first else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "rejected message on %s (%s): %s%s", where[:300], reason, message[:300], suffix)

    def _spell(self, key: str, count: int) -> tuple[bool, int]:
        """Whether to log ``key`` now (at most once per ``SPELL_SECONDS``), and how many were
        kept quiet since the last line. Keys are a fixed set (reasons), so this stays small."""
        now = self.clock()
        with self._queued_lock:  # the network thread and the workers both log
            last, since = self._spells.get(key, (None, 0))
            if last is None or now - last >= SPELL_SECONDS:
                self._spells[key] = (now, 0)
                return True, since
            self._spells[key] = (last, since + count)
            return False, 0

    def _refuse_items(self, node: str, what: str, refused: list[ItemRefused]) -> None:
        """Count every item of a list body the models refused; log the first one (with its key)."""
        if refused:
            first = refused[0]
            more = f" (and {len(refused) - 1} more items)" if len(refused) > 1 else ""
            where = f"{node}/{what} item {first.key or first.path}"
            self._reject("invalid", where, f"{first}{more}", node, len(refused))

    # -- network thread --------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, retained: bool = False) -> None:
        node: str | None = None
        try:
            parsed = self.topics.parse(topic)
            node = parsed.node
            self._on_message(parsed, payload, retained)
        except ProtocolError as exc:
            self._reject(getattr(exc, "reason", "invalid"), topic, str(exc), node)
        except Exception:  # never let one message stop the GM
            self.metrics.reject("internal")
            log.exception("failed to handle a message on %s", topic[:300])

    def _on_message(self, parsed: Topic, payload: bytes, retained: bool = False) -> None:
        if parsed.node is None:
            return  # the GM's own presence
        node = parsed.node
        if parsed.is_presence:
            if not payload:
                return  # a cleared retained message
            env = decode(payload, max_payload=self.max_payload)
            self._check_node(env, node)
            if env.op is not Op.PRESENCE:
                raise ReportRejected("op", f"operation {env.op.value!r} is not allowed on a presence topic")
            presence = Presence.parse(env.body)
            if node not in self._epochs:
                # Nothing is kept for a name that never said hello (a flood of made-up names
                # would grow ``nodes``): its hello, which follows its presence, records it.
                raise ReportRejected("unknown_node", f"presence of node {node}, which has not said hello")
            online = presence.state == "online"
            if online and retained:
                # The broker's copy, maybe older than this GM: the node is online for this GM only
                # once it speaks (its hello answers our presence, or a live presence).
                log.info("node %s was online before this GM started; waiting for its hello", node)
                return
            log.info("node %s is %s", node, presence.state)
            work = _NodeWork(self, node, online=online, agent=presence.agent)
            self.executor.submit(("node", node), work, burst=self._node_burst)
            return
        if parsed.direction is not Direction.UP:
            raise ReportRejected("direction", "the GM only reads upstream topics")
        env = decode(payload, max_payload=self.max_payload)
        self._check_node(env, node)
        if parsed.is_control:
            if env.kind != parsed.kind:
                raise ReportRejected("topic_mismatch", f"envelope kind {env.kind!r} on a control topic")
            if env.op is Op.HELLO:
                self._hello(node, env)
            elif env.op is Op.ACK:
                ack, refused = AppliedAck.parse_lenient(env.body)
                self._refuse_items(node, "ack", refused)
                if ack.applied:
                    self.executor.submit(("node", node), functools.partial(self._ack, node, ack.applied))
            elif env.op is Op.LOG and self.on_log is not None:
                self.on_log(node, env)  # a worker log answer (cloud/logs.py): no I/O, not queued
            else:
                raise ReportRejected("op", f"operation {env.op.value!r} is not allowed on up/_ctl")
            return
        if (env.kind, env.ns, env.name) != (parsed.kind, parsed.ns, parsed.name):
            raise ReportRejected(
                "topic_mismatch",
                f"envelope is about {env.kind}/{env.ns}/{env.name}, the topic about "
                f"{parsed.kind}/{parsed.ns}/{parsed.name}",
            )
        if env.op is not Op.REPORT:
            raise ReportRejected("op", f"operation {env.op.value!r} is not allowed on an up resource topic")
        if env.seq is None:
            raise ReportRejected("schema", "a report needs a seq")
        controller = self.registry.get(env.kind)
        if controller is None:
            raise ReportRejected("unknown_kind", f"no controller for kind {env.kind!r}")
        epoch = self._epochs.get(node)
        if epoch is None:
            raise ReportRejected("unknown_node", f"node {node} has not said hello yet; its report waits")
        seq = env.seq
        try:
            report = controller.parse_report(env.body)
        except InvalidBody as exc:
            # Resending the same body can never make it valid: acknowledge it (recorded like an
            # applied report), so the LC's outbox lets it go (docs/protocol.md, "report").
            self._reject("invalid", f"{node}/{env.kind}/{env.ns}/{env.name} seq {seq}", str(exc), node)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("report %s/%s/%d rejected", node, epoch, seq)
            self._queue_ack(node, epoch, seq)
            return
        key = controller.report_key(env, report)
        with self._queued_lock:
            queued = self._queued.get(node, 0)
            if queued >= self.max_queued_per_node:
                busy = True
            else:
                busy = False
                self._queued[node] = queued + 1
        if busy:
            raise ReportRejected(
                "busy", f"{queued} reports of node {node} wait to be applied; this one is resent later"
            )
        if self.store_db is not None and getattr(controller, "bursts", False):
            task = _Report(self, node, epoch, env, controller, report)
            self.executor.submit(key, task, burst=self._burst)
        else:
            self.executor.submit(key, lambda: self._apply_queued(node, epoch, env, controller, report))

    def _check_node(self, env: Envelope, node: str) -> None:
        if env.node != node:
            raise ReportRejected(
                "identity", f"envelope speaks for node {env.node!r} on node {node!r}'s topic"
            )

    def _hello(self, node: str, env: Envelope) -> None:
        hello, refused = Hello.parse_lenient(env.body)
        if node not in self._epochs and len(self._epochs) >= self.max_nodes:
            raise ReportRejected(
                "too_many_nodes",
                f"the GM keeps {self.max_nodes} nodes; hello of node {node} refused "
                "(lifelong delete node makes room)",
            )
        if hello.hello_id is not None:
            # A part (``parts`` 1: a whole hello from an LC that reads a sync in parts): gathered
            # here, on the network thread, until every part of its hello is in.
            if hello.part == 0:  # every hello has one: a new connection, as for a whole hello
                self._logged.forget_scope(node)
            self._refuse_items(node, "hello", refused)
            whole = self.hello_parts.add(node, hello)
            if whole is None:
                return
            hello = whole
        else:
            self.hello_parts.drop(node, "a whole hello came")
            self._logged.forget_scope(node)  # a new connection: its first rejection of each reason is logged
            self._refuse_items(node, "hello", refused)
        # Known at once, here, so reports that follow are deduplicated under the new epoch; the
        # bookkeeping write and the diff run on the node's key, in order with its other work.
        self._epochs[node] = hello.epoch
        self.metrics.hellos.inc()
        log.info(
            "node %s said hello (%s, epoch %s, holds %d%s)",
            node,
            hello.agent,
            hello.epoch[:12],
            len(hello.resources),
            f", in {hello.parts} parts" if hello.parts and hello.parts > 1 else "",
        )
        work = _NodeWork(self, node, hello=hello)
        self.executor.submit(("node", node), work, burst=self._node_burst)

    def _hello_dropped(self, node: str, dropped: PartSet[ResourceRef], why: str) -> None:
        """An incomplete hello given up (``HelloParts``): counted, never answered; the LC says
        hello again when no sync comes."""
        detail = f"{len(dropped.received)} of its {dropped.parts} parts had come when {why}; dropped"
        self._reject("incomplete_hello", f"{node}/hello {dropped.id}", detail, node)

    def apply_node_burst(self, run: list[_NodeWork]) -> None:
        """Record a run of hellos and presence changes (in order) in one transaction of the
        bookkeeping, each in a savepoint (one that raises rolls back alone, logged and counted as
        a failed task, and the others go on); then, after the commit, publish each hello's diff
        and ``sync``. The nodes' delivery locks are held from the first read to the last
        ``sync`` (docs/protocol.md: a diff leaves only once its hello's record is committed)."""
        plans: list[HelloPlan] = []
        with self.delivery.holding_nodes(w.node for w in run if w.hello is not None):
            try:
                with self.state.transaction():
                    for work in run:
                        try:
                            with self.state.transaction():  # a savepoint: this one alone rolls back
                                plan = work.record()
                        except Exception:
                            log.exception("%s of node %s failed", work.what, work.node)
                            self._task_failed(work.node)
                            continue
                        if plan is not None:
                            plans.append(plan)
            except Exception:
                log.exception("recording %d hellos and presence changes failed; no diff sent", len(run))
                for work in run:
                    self._task_failed(work.node)
                return
            if len(run) > 1 and log.isEnabledFor(logging.DEBUG):
                log.debug("recorded %d hellos and presence changes in one transaction", len(run))
            for plan in plans:
                try:
                    self.delivery.send_hello(plan)
                except Exception:
                    log.exception("sending the hello diff of node %s failed", plan.node)
                    self._task_failed(plan.node)

    def _task_failed(self, node: str) -> None:
        if self.executor.on_failure is not None:
            try:
                self.executor.on_failure(("node", node))
            except Exception:
                log.exception("counting a failed task failed")

    def forget_node(self, node: str) -> None:
        """Forget the node's epoch (``lifelong delete node``): its reports are ``unknown_node``
        (not acknowledged, so resent) until its next hello."""
        self._epochs.pop(node, None)
        self.hello_parts.forget(node)
        self._logged.forget_scope(node)

    def _ack(self, node: str, applied: list[Applied]) -> None:
        self.delivery.on_ack(node, applied)

    # -- worker threads --------------------------------------------------------------------
    def _apply_queued(
        self, node: str, epoch: str, env: Envelope, controller: Controller[Any], report: Any
    ) -> None:
        try:
            self._apply(node, epoch, env, controller, report)
        finally:
            self._dequeued([node])

    def queued(self, node: str) -> int:
        """Reports of ``node`` handed to the executor and not applied yet."""
        with self._queued_lock:
            return self._queued.get(node, 0)

    def _store_transaction(self) -> Any:
        return self.store_db.transaction() if self.store_db is not None else nullcontext()

    @contextmanager
    def _both(self) -> Iterator[None]:
        """A transaction of the bookkeeping and, inside it, one of the store (savepoints when
        already in one): the store's commits (or releases) first."""
        with self.state.transaction(), self._store_transaction():
            yield

    def apply_burst(self, reports: list[_Report]) -> None:
        """Apply ``reports`` (in order) in one transaction; acknowledge them after the commit."""
        done: list[tuple[_Report, Outcome | None]] = []  # acknowledged after the commit
        rejected: list[tuple[_Report, ReportRejected]] = []
        acks: dict[tuple[str, str], list[int]] = {}
        seen: set[tuple[str, str, int]] = set()
        try:
            with self._both():
                for r in reports:
                    assert r.env.seq is not None
                    seq = r.env.seq
                    if (
                        (r.node, r.epoch, seq) in seen
                        or self._waiting_ack(r.node, r.epoch, seq)
                        or self.state.is_applied(r.node, r.epoch, seq)
                    ):
                        outcome: Outcome | None = Outcome.DUPLICATE
                    else:
                        try:
                            with self._both():  # savepoints: this report alone rolls back
                                outcome = r.controller.apply_report(r.node, r.env, r.report)
                        except ReportRejected as exc:
                            rejected.append((r, exc))
                            outcome = None
                        except ReportDeferred as exc:
                            self._defer(exc, f"{r.where} seq {seq}")
                            continue
                        except Exception:
                            log.exception("applying report %s of %s failed; not acknowledged", seq, r.where)
                            continue
                    seen.add((r.node, r.epoch, seq))
                    acks.setdefault((r.node, r.epoch), []).append(seq)
                    done.append((r, outcome))
                for (node, epoch), seqs in acks.items():
                    self.state.mark_applied_many(node, epoch, seqs)
        except Exception:
            log.exception("applying a burst of %d reports failed; none acknowledged", len(reports))
            self.metrics.item_failures.labels(loop="burst").inc()
            return
        finally:
            self._dequeued([r.node for r in reports])
        for r, refusal in rejected:
            self._reject(refusal.reason, f"{r.where} seq {r.env.seq}", str(refusal), r.node)
        debug = log.isEnabledFor(logging.DEBUG)
        if debug and len(reports) > 1:  # the fault suite checks its kills land among bursts
            log.debug("applied a burst of %d reports in one transaction", len(reports))
        for r, outcome in done:
            if debug:  # the fault suite counts applications from this line
                log.debug(
                    "report %s/%s/%d %s", r.node, r.epoch, r.env.seq, outcome.value if outcome else "rejected"
                )
            if outcome is Outcome.APPLIED:
                self.metrics.upstream_applied.labels(kind=r.env.kind).inc()
            elif outcome is Outcome.DUPLICATE:
                self.metrics.upstream_duplicate.labels(kind=r.env.kind).inc()
        for (node, epoch), seqs in acks.items():
            for start in range(0, len(seqs), ACK_BATCH):
                self.delivery.ack_upstream(node, epoch, seqs[start : start + ACK_BATCH])

    def _dequeued(self, nodes: list[str]) -> None:
        """One report of each of ``nodes`` (repeated for several) left the executor."""
        with self._queued_lock:
            for node in nodes:
                left = self._queued.get(node, 1) - 1
                if left > 0:
                    self._queued[node] = left
                else:
                    self._queued.pop(node, None)

    def _apply(self, node: str, epoch: str, env: Envelope, controller: Controller[Any], report: Any) -> None:
        assert env.seq is not None
        seq = env.seq
        if self._waiting_ack(node, epoch, seq) or self.state.is_applied(node, epoch, seq):
            self.metrics.upstream_duplicate.labels(kind=env.kind).inc()
            self._queue_ack(node, epoch, seq)
            return
        try:
            outcome = controller.apply_report(node, env, report)
        except ReportRejected as exc:
            self._reject(exc.reason, f"{node}/{env.kind}/{env.ns}/{env.name} seq {seq}", str(exc), node)
            outcome = None
        except ReportDeferred as exc:
            self._defer(exc, f"{node}/{env.kind}/{env.ns}/{env.name} seq {seq}")
            return
        except Exception:
            log.exception("applying report %s of node %s failed; not acknowledged", seq, node)
            return
        if log.isEnabledFor(logging.DEBUG):  # the fault suite counts applications from this line
            log.debug("report %s/%s/%d %s", node, epoch, seq, outcome.value if outcome else "rejected")
        if outcome is Outcome.APPLIED:
            self.metrics.upstream_applied.labels(kind=env.kind).inc()
        elif outcome is Outcome.DUPLICATE:
            self.metrics.upstream_duplicate.labels(kind=env.kind).inc()
        self._queue_ack(node, epoch, seq)

    def _defer(self, exc: ReportDeferred, where: str) -> None:
        """A report left unacknowledged, to be resent by the LC (``ReportDeferred``): counted by
        reason; logged at WARNING once per reason per ``SPELL_SECONDS`` (with how many were
        deferred since), whatever the nodes, as the cause is the GM's, not theirs."""
        self.metrics.upstream_deferred.labels(reason=exc.reason).inc()
        first, since = self._spell(f"deferred {exc.reason}", 1)
        level = logging.WARNING if first else logging.DEBUG
        if log.isEnabledFor(level):
            more = f" ({since} more deferred since the last such line)" if since else ""
            log.log(level, "report %s not applied, left for the LC to resend: %s%s", where[:300], exc, more)

    def _waiting_ack(self, node: str, epoch: str, seq: int) -> bool:
        with self._ack_lock:
            return seq in self._acking.get((node, epoch), ())

    def awaiting_ack(self, node: str, epoch: str) -> list[int]:
        """The seqs of ``node`` applied under ``epoch`` that wait for their ack batch."""
        with self._ack_lock:
            return list(self._acks.get((node, epoch), ()))

    def _queue_ack(self, node: str, epoch: str, seq: int) -> None:
        """Record and acknowledge ``seq`` with the node's next batch (a flush is queued if none is)."""
        key = (node, epoch)
        with self._ack_lock:
            pending = self._acks.get(key)
            self._acking.setdefault(key, set()).add(seq)
            if pending is not None:
                pending.append(seq)
                return
            self._acks[key] = [seq]
        self.executor.submit(("ack", node), lambda: self._flush_acks(node, epoch))

    def _flush_acks(self, node: str, epoch: str) -> None:
        key = (node, epoch)
        with self._ack_lock:
            seqs = list(self._acks.get(key, ()))
        try:
            self.state.mark_applied_many(node, epoch, seqs)
            recorded = True
        except Exception:
            log.exception("recording %d applied reports of node %s failed; not acknowledged", len(seqs), node)
            recorded = False
        with self._ack_lock:
            rest = self._acks.get(key, [])[len(seqs) :]
            if rest:
                self._acks[key] = rest
                self._acking[key] = set(rest)
            else:
                self._acks.pop(key, None)
                self._acking.pop(key, None)
        if rest:
            self.executor.submit(("ack", node), lambda: self._flush_acks(node, epoch))
        if recorded:
            for start in range(0, len(seqs), ACK_BATCH):
                self.delivery.ack_upstream(node, epoch, seqs[start : start + ACK_BATCH])


@dataclass(slots=True)
class _Report:
    """One report waiting in the executor to be applied within a burst (alone: a burst of one)."""

    intake: Intake
    node: str
    epoch: str
    env: Envelope
    controller: Controller[Any]
    report: Any

    @property
    def where(self) -> str:
        return f"{self.node}/{self.env.kind}/{self.env.ns}/{self.env.name}"

    def __call__(self) -> None:
        self.intake.apply_burst([self])


@dataclass(slots=True)
class _NodeWork:
    """A hello (``hello``) or a presence change (``online``) of one node waiting in the
    executor to be recorded within a burst of them (alone: a burst of one)."""

    intake: Intake
    node: str
    hello: Hello | None = None
    online: bool = False
    agent: str = ""

    @property
    def what(self) -> str:
        return "hello" if self.hello is not None else "presence"

    def record(self) -> HelloPlan | None:
        """The bookkeeping (inside the burst's transaction); a hello's diff, planned."""
        state = self.intake.state
        if self.hello is None:
            state.set_online(self.node, self.online, self.agent)
            return None
        outbox = self.hello.outbox
        state.hello(
            self.node,
            agent=self.hello.agent,
            epoch=self.hello.epoch,
            boot=self.hello.boot,
            low_seq=outbox.low_seq,
            depth=outbox.depth,
            next_seq=outbox.next_seq,
        )
        plan = self.intake.delivery.plan_hello(self.node, self.hello.resources)
        plan.parted = self.hello.hello_id is not None  # this LC reads a sync in parts
        return plan

    def __call__(self) -> None:
        self.intake.apply_node_burst([self])


class HelloParts:
    """The parts of hellos being gathered, one set per node (docs/protocol.md, ``hello``). Used by
    the network thread only.

    Bounds: a set of at most ``MAX_PARTS`` parts per node; at most ``max_open`` incomplete sets
    and ``max_items`` resources in them, all nodes together (a part beyond is refused ``busy``
    and its node's set dropped: the LC says hello again later); a set incomplete after
    ``timeout`` seconds is dropped. ``on_dropped(node, set, why)`` hears of every set given up
    (by the timeout, a bound, or a newer hello of its node)."""

    def __init__(
        self,
        on_dropped: Callable[[str, PartSet[ResourceRef], str], None],
        *,
        known: Callable[[str], bool] = lambda node: True,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = HELLO_PARTS_SECONDS,
        max_open: int = MAX_OPEN_HELLOS,
        max_items: int = MAX_GATHERED_RESOURCES,
    ) -> None:
        self.on_dropped = on_dropped
        self.known = known
        self.clock = clock
        self.timeout = timeout
        self.max_open = max_open
        self.max_items = max_items
        self.items = 0  # resources held in incomplete sets
        self._gatherers: dict[str, PartGatherer[ResourceRef]] = {}
        self._open: OrderedDict[str, float] = OrderedDict()  # nodes with an incomplete set, oldest first

    def open(self) -> int:
        """Incomplete sets held."""
        return len(self._open)

    def add(self, node: str, hello: Hello) -> Hello | None:
        """Add one part of ``node``'s hello (its part fields given); the whole hello once every
        part is in, else None. Raises ``PartRefused`` for a part that cannot join (nothing
        changes) or ``busy`` past the bounds."""
        assert hello.hello_id is not None and hello.part is not None and hello.parts is not None
        now = self.clock()
        self._expire(now)
        gatherer = self._gatherers.get(node) or PartGatherer[ResourceRef]("hello")
        header = (hello.epoch, hello.boot, hello.agent)
        gatherer.check(hello.hello_id, hello.part, hello.parts, header)
        current = gatherer.current
        joins = current is not None and current.id == hello.hello_id
        held = current.items if current is not None and not joins else 0  # what a new set drops
        adding = len(hello.resources) if hello.parts > 1 else 0  # a whole hello is not held
        opening = not joins and hello.parts > 1
        busy = self.items - held + adding > self.max_items or (
            opening and node not in self._open and len(self._open) >= self.max_open
        )
        if busy:
            self.drop(node, f"the GM holds {self.items} resources of {len(self._open)} incomplete hellos")
            raise PartRefused(
                "busy",
                f"part {hello.part} of {hello.parts} of hello {hello.hello_id}: the GM gathers too many "
                f"hellos in parts now ({len(self._open)} incomplete, {self.items} resources); "
                "the node says hello again later",
            )
        gathered, dropped = gatherer.add(
            hello.hello_id, hello.part, hello.parts, list(hello.resources), header=header, now=now
        )
        self._gatherers[node] = gatherer
        if dropped is not None:
            self.items -= dropped.items
            self._open.pop(node, None)
            self.on_dropped(node, dropped, f"hello {hello.hello_id} began")
        if gathered is None:
            self.items += len(hello.resources)
            if not joins:
                self._open[node] = now
            return None
        if joins:
            self.items -= len(gathered) - len(hello.resources)
        self._open.pop(node, None)
        return hello.model_copy(update={"resources": gathered})

    def drop(self, node: str, why: str) -> None:
        """Give up ``node``'s incomplete set, if any (and forget a node that never said hello)."""
        gatherer = self._gatherers.get(node)
        dropped = gatherer.drop() if gatherer is not None else None
        self._open.pop(node, None)
        if not self.known(node):
            self._gatherers.pop(node, None)  # nothing is kept for a name that never said hello
        if dropped is not None:
            self.items -= dropped.items
            self.on_dropped(node, dropped, why)

    def forget(self, node: str) -> None:
        """Forget everything of ``node`` (its set, the ids it remembers)."""
        gatherer = self._gatherers.pop(node, None)
        self._open.pop(node, None)
        if gatherer is not None and gatherer.current is not None:
            self.items -= gatherer.current.items

    def _expire(self, now: float) -> None:
        while self._open:
            node, started = next(iter(self._open.items()))
            if now - started < self.timeout:
                return
            self.drop(node, f"it was still incomplete after {self.timeout:.0f} s")


class _Burst:
    """An executor burst (``cloud/workqueue.py``) of the intake's: one transaction per run, by
    ``apply`` (reports: ``Intake.apply_burst``; hellos and presence: ``apply_node_burst``)."""

    def __init__(self, apply: Callable[[list[Any]], None], limit: int) -> None:
        self.apply = apply
        self.limit = limit

    def run(self, tasks: list[Task]) -> None:
        self.apply(tasks)
