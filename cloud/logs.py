"""The GM's side of ``lifelong logs``: ask a worker's node for part of its log over the bus.

Who calls it: the HTTP API (``GET /api/v1/Worker/{ns}/{name}/log``, ``cloud/api_server.py``)
calls ``fetch``, which blocks its request thread until the answer or the deadline; the intake
(``cloud/intake.py``) hands every ``log`` message on ``up/_ctl`` to ``on_answer`` on the bus's
network thread (a parse, a dict look-up and an event: no I/O, no lock held for long).

The exchange (docs/protocol.md, "log"): a ``LogRequest`` on the node's ``down/_ctl``, answered
by a ``LogAnswer`` on its ``up/_ctl`` naming the request's envelope id. Requests are not
durable (no outbox, no resend): a node that does not answer within the deadline (10 s by
default, at most 60 s) gives ``LogTimeout``, whose message says whether the GM sees the node
online. At most ``MAX_PENDING`` requests wait at once. An answer that names no waiting request
(late, after its deadline) is dropped; one from another node than the one asked is rejected
(``identity``, counted). Nothing is kept per answer; a refused one is logged at WARNING once per
(node, reason), at DEBUG after that.

Which node: the Worker object's template (standalone mode) while it exists; after it finished
(the GM deletes finished Workers), the job its name ``{job}-{stage}-{round}`` names, and that
stage's template ``nodeName``. The LC itself answers only about workers it runs or ran.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lifelong.cloud.stores.base import NotFound, Refused, ResourceStore, parse
from lifelong.common.api import LifelongLearningJob, Worker
from lifelong.common.codec import Codec, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.errors import BusError, InvalidBody, LifelongError, ValidationError
from lifelong.common.logonce import LogOnce
from lifelong.common.messages import MAX_LOG_CHUNK, MAX_TAIL_LINES, LogAnswer, LogRequest
from lifelong.common.stages import Stage
from lifelong.common.topics import Topics

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
"""Seconds the GM waits for a node's answer to a log request."""
MAX_TIMEOUT = 60.0
MAX_PENDING = 64
"""Log requests that may wait for their answers at once; more are refused (429)."""
_WORKER_NAME = re.compile(r"(?P<job>.+)-(?P<stage>train|eval|deploy)-(?P<round>\d+)(?:-retry\d+)?")
"""A worker's name: ``{job}-{stage}-{round}``, and ``-retry{n}`` after it for a retry
(``cloud/runtimes/base.py``), so a finished retry's node is found from its job too."""


class LogTimeout(LifelongError):
    """The node did not answer in time (offline, or its LC is not running)."""

    http_status = 504


class LogUnavailable(LifelongError):
    """The node answered that it cannot give the log, or the GM cannot ask (not connected)."""

    http_status = 502


class TooManyLogRequests(LifelongError):
    http_status = 429


@dataclass
class _Pending:
    node: str
    done: threading.Event = field(default_factory=threading.Event)
    answer: LogAnswer | None = None


def _int_param(query: dict[str, list[str]], name: str, low: int, high: int) -> int | None:
    values = query.get(name)
    if not values or values[-1] == "":
        return None
    try:
        value = int(values[-1])
    except ValueError:
        raise ValidationError([(name, f"must be an integer, got {values[-1][:40]!r}")]) from None
    if not low <= value <= high:
        raise ValidationError([(name, f"must be between {low} and {high}, got {value}")])
    return value


class WorkerLogRequests:
    """Asks nodes for workers' logs and matches their answers to the waiting requests.

    ``publish(topic, payload)`` sends on the bus (``BusError`` when not connected);
    ``node_online(node)`` is the GM's view of a node (for the timeout's message);
    ``reject(reason)`` counts a refused answer."""

    def __init__(
        self,
        store: ResourceStore,
        topics: Topics,
        publish: Callable[[str, bytes], object],
        *,
        codec: Codec = Codec.MSGPACK,
        max_payload: int | None = None,
        node_online: Callable[[str], bool | None] = lambda node: None,
        reject: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.store = store
        self.topics = topics
        self.publish = publish
        self.codec = codec
        self.max_payload = max_payload
        self.node_online = node_online
        self.reject = reject
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}  # at most MAX_PENDING, each gone at its deadline
        self._logged = LogOnce()  # refused answers: one WARNING per (node, reason), bounded

    # -- which node ---------------------------------------------------------------------------
    def worker_node(self, ns: str, name: str) -> str:
        """The node worker ``ns/name`` runs or ran on; ``NotFound`` if the GM knows none."""
        obj = self.store.get(Worker.KIND, ns, name)
        if obj is not None:
            try:
                worker = parse(obj)
            except Refused:
                worker = None
            if isinstance(worker, Worker) and worker.node_name:
                return worker.node_name
        match = _WORKER_NAME.fullmatch(name)
        job_obj = self.store.get(LifelongLearningJob.KIND, ns, match["job"]) if match else None
        if match and job_obj is not None:
            try:
                job = parse(job_obj)
            except Refused:
                job = None
            if isinstance(job, LifelongLearningJob):
                node = job.spec.worker_node(Stage(match["stage"].capitalize()))
                if node:
                    return node
        raise NotFound(
            f'worker "{name}" not found in namespace {ns}: no Worker object of that name, and no '
            "job it belongs to (worker names are JOB-train|eval|deploy-ROUND, then -retryN for a retry)"
        )

    # -- the HTTP API's side --------------------------------------------------------------------
    def fetch_query(self, ns: str, name: str, query: dict[str, list[str]]) -> dict[str, Any]:
        """``fetch`` with the HTTP query's ``tail``, ``offset``, ``limit`` and ``timeout``."""
        tail = _int_param(query, "tail", -1, MAX_TAIL_LINES)
        offset = _int_param(query, "offset", 0, 2**62)
        limit = _int_param(query, "limit", 1, MAX_LOG_CHUNK)
        timeout = _int_param(query, "timeout", 1, int(MAX_TIMEOUT))
        return self.fetch(
            ns,
            name,
            offset=offset,
            tail=None if tail is None or tail < 0 else tail,
            limit=limit or MAX_LOG_CHUNK,
            timeout=DEFAULT_TIMEOUT if timeout is None else float(timeout),
        )

    def fetch(
        self,
        ns: str,
        name: str,
        *,
        offset: int | None = None,
        tail: int | None = None,
        limit: int = MAX_LOG_CHUNK,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        """Ask the worker's node and wait for its answer: the answer's body plus ``node``."""
        try:
            req = LogRequest.parse(
                {"ns": ns, "worker": name, "offset": offset, "tailLines": tail, "maxBytes": limit}
            )
        except InvalidBody as exc:
            names = {"ns": "namespace", "worker": "name"}
            raise ValidationError(
                [(names.get(p, p), m) for p, m in exc.errors], source="log request"
            ) from None
        node = self.worker_node(ns, name)
        env = Envelope.new(node=node, kind=CONTROL_KIND, op=Op.LOG, body=req.to_body())
        waiting = _Pending(node)
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                raise TooManyLogRequests(
                    f"{MAX_PENDING} log requests already wait for their nodes; try again"
                )
            self._pending[env.id] = waiting
        try:
            try:
                self.publish(
                    self.topics.down_ctl(node), encode(env, self.codec, max_payload=self.max_payload)
                )
            except BusError as exc:
                raise LogUnavailable(f"cannot ask node {node} for the log: {exc}") from None
            if not waiting.done.wait(timeout):
                online = self.node_online(node)
                seen = {True: "online", False: "offline", None: "unknown"}[online]
                raise LogTimeout(
                    f"node {node} did not answer the log request for worker {ns}/{name} within "
                    f"{timeout:g}s (the GM sees the node as {seen}; is its LC running?)"
                )
        finally:
            with self._lock:
                self._pending.pop(env.id, None)
        answer = waiting.answer
        assert answer is not None  # set before done
        if answer.reason == "unknown_worker":
            raise NotFound(answer.error or f"worker {ns}/{name} has no log on node {node}")
        if answer.error is not None:
            raise LogUnavailable(f"node {node}: {answer.error} ({answer.reason})")
        return {"node": node, **answer.to_body()}

    # -- the intake's side (network thread) -------------------------------------------------------
    def on_answer(self, node: str, env: Envelope) -> None:
        """A ``log`` answer from ``node``: wake the request it answers."""
        try:
            answer = LogAnswer.parse(env.body)
        except InvalidBody as exc:
            self.reject("invalid")
            level = logging.WARNING if self._logged.first(node, "invalid") else logging.DEBUG
            log.log(level, "log answer from node %s refused: %s", node, str(exc)[:300])
            return
        with self._lock:
            waiting = self._pending.get(answer.request)
        if waiting is None:
            log.debug("log answer %s from node %s came after its deadline; dropped", answer.request, node)
            return
        if waiting.node != node:
            self.reject("identity")
            level = logging.WARNING if self._logged.first(node, "identity") else logging.DEBUG
            log.log(
                level, "log answer from node %s to a request sent to node %s; dropped", node, waiting.node
            )
            return
        waiting.answer = answer
        waiting.done.set()
