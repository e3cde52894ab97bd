"""The GM's local HTTP API (standalone mode), used by ``lifelong apply/get/describe/delete``.

Stdlib ``ThreadingHTTPServer`` on 127.0.0.1:9300 by default: it is an admin interface on the
GM's own host, not a public API (no authentication; bind it to loopback). JSON in and out:

=======================================  =================================================
``GET /healthz``                         ``ok``
``GET /metrics``                         Prometheus text format
``GET /api/v1/nodes``                    ``{"items": [{node, online, agent, ...}]}``
``DELETE /api/v1/nodes/{node}``          ``{"result": "deleted", "node": N}``: forget an offline node
``POST /api/v1/apply``                   body: one resource; ``{"result": "created" |
                                         "configured" | "unchanged", "object": {...}}``
``GET /api/v1/{kind}?namespace=NS``      ``{"items": [...]}`` (all namespaces without NS)
``GET /api/v1/{kind}/{ns}/{name}``       the object
``DELETE /api/v1/{kind}/{ns}/{name}``    ``{"result": "deleted", "object": {...}}``
``GET /api/v1/describe/{kind}/{ns}/{name}``  the object, its workers, worker info, per-node delivery,
                                         and ``waiting``: the nodes it waits for
``GET /api/v1/Worker/{ns}/{name}/log``   part of a worker's log from its node (``cloud/logs.py``;
                                         ``?tail=N``, ``offset=K``, ``limit=B``, ``timeout=S``)
=======================================  =================================================

Errors are ``{"error": "<one line>", "reason": "<class>"}`` with 400 (validation), 404, 409, and
for worker logs 429 (too many waiting), 502 (the node cannot give it), 504 (no answer in time).
Validation happens here, before anything is stored: the API models, the job's Dataset must exist,
and every template names a node. A node need not be known yet (as Kubernetes accepts a Pod for a
node that does not exist): the object is stored, what the node should hold waits in the delivery
bookkeeping and is sent with the node's first hello; ``describe`` lists such nodes under
``waiting`` (reason ``WaitingForNode``) and a Dataset's status says so too (its controller).

Deleting a node (``lifelong delete node N``) forgets what the GM keeps about it
(``GMState.forget_node``: its record, its applied-report records, its delivery tombstones and
acknowledgements, the intake's epoch) and marks its Datasets ``WaitingForNode``. Resources naming
it stay: they wait for the node, which gets them again with its next hello. An online node is
refused (409): its LC would go on unknown until it reconnects; stop the LC first.
``validate`` returns the model it parsed and ``apply`` passes that model on; the wire form is
made only where the store is given it (and where the HTTP answer is written).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lifelong.cloud.gmstate import GMState
from lifelong.cloud.logs import WorkerLogRequests
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.runtimes.edge_process import workers_of
from lifelong.cloud.stores.base import Conflict, NotFound, Object, Refused, ResourceStore, parse, read, wire
from lifelong.common.api import RESOURCE_TYPES, AnyResource, Dataset, LifelongLearningJob, parse_resource
from lifelong.common.errors import LifelongError, ValidationError
from lifelong.common.topics import RESERVED_NODE_NAMES, RESERVED_WHY

log = logging.getLogger(__name__)

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 9300
MAX_BODY = 1024 * 1024
READ_KINDS = (*RESOURCE_TYPES, "Worker")


REASON_WAITING_FOR_NODE = "WaitingForNode"


class _KnownNodes:
    """Whether a node is known (has said hello or is online), each node looked up once per
    request: one indexed row each, not every node the GM knows."""

    def __init__(self, state: GMState) -> None:
        self.state = state
        self._seen: dict[str, bool] = {}

    def __contains__(self, node: object) -> bool:
        if not isinstance(node, str):
            return False
        if node not in self._seen:
            self._seen[node] = self.state.known(node)
        return self._seen[node]


def _reserved(node: str) -> str:
    return f"node name {node!r} is reserved ({RESERVED_WHY[node]}); no LC may have it"


def validate(obj: Any, store: ResourceStore, state: GMState) -> AnyResource:
    """The model of a valid resource, or ``ValidationError`` naming each problem with its field."""
    if isinstance(obj, dict) and obj.get("kind") == "Worker":
        raise ValidationError([("kind", "Worker objects are made by the GM, not applied")])
    res = parse_resource(obj)
    ns = res.metadata.namespace
    problems: list[tuple[str, str]] = []
    if isinstance(res, LifelongLearningJob):
        ds_name = res.spec.dataset.name
        if store.get(Dataset.KIND, ns, ds_name) is None:
            problems.append(("spec.dataset.name", f"Dataset {ns}/{ds_name} does not exist"))
        for path, node in res.spec.worker_nodes():
            if node is None:
                problems.append((path, "names no node to run the worker on"))
            elif node in RESERVED_NODE_NAMES:
                problems.append((path, _reserved(node)))
    elif isinstance(res, Dataset) and res.spec.node_name in RESERVED_NODE_NAMES:
        problems.append(("spec.nodeName", _reserved(res.spec.node_name)))
    if problems:
        raise ValidationError(problems, source=f"{res.kind} {ns}/{res.metadata.name}")
    return res


def waiting_for(obj: Object, store: ResourceStore, state: GMState) -> list[dict[str, str]]:
    """The nodes a stored Dataset or job names that the GM does not know (no hello since it
    last forgot them), each with reason ``WaitingForNode`` and a message naming it."""
    try:
        res = parse(obj)
    except Refused:
        return []
    nodes: list[str] = []
    if isinstance(res, Dataset):
        nodes = [res.spec.node_name]
    elif isinstance(res, LifelongLearningJob):
        try:
            dataset = read(store, Dataset, res.namespace, res.spec.dataset.name)
        except Refused:
            dataset = None
        nodes = res.node_names(dataset)
    known = _KnownNodes(state)
    return [
        {
            "node": node,
            "reason": REASON_WAITING_FOR_NODE,
            "message": f"node {node!r} has not said hello to the GM; what it should hold is sent "
            "when its LC connects",
        }
        for node in nodes
        if node not in known
    ]


def _desired(res: AnyResource) -> Object:
    """What the store is given of an applied resource: its wire form without ``status`` (the
    GM's own, never the user's)."""
    out = wire(res)
    out.pop("status", None)
    return out


def _version(obj: Object | None) -> str | None:
    """The ``metadata.resourceVersion`` of an object a store returned."""
    meta = obj.get("metadata") if obj is not None else None
    return str(meta.get("resourceVersion")) if isinstance(meta, dict) else None


class GMApi:
    """What the HTTP handlers call; separate from HTTP so it is easy to test."""

    def __init__(
        self,
        store: ResourceStore,
        state: GMState,
        metrics: GMMetrics,
        *,
        forget_node: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.state = state
        self.metrics = metrics
        self.logs: WorkerLogRequests | None = None
        """Set by the service when workers' logs can be fetched (standalone mode)."""
        self.forget_node = forget_node
        """Forgets a node everywhere (the service's; default: only the bookkeeping)."""
        self._apply_lock = threading.Lock()

    def apply(self, obj: Any) -> dict[str, Any]:
        res = validate(obj, self.store, self.state)
        key = res.key
        with self._apply_lock:
            before = self.store.get(*key)
            stored = self.store.apply(_desired(res))
        if before is None:
            result = "created"
        elif _version(before) == _version(stored):
            result = "unchanged"
        else:
            result = "configured"
        log.info("%s %s/%s %s", key[0], key[1], key[2], result)
        return {"result": result, "object": stored}

    def delete(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        gone = self.store.delete(kind, ns, name)
        if gone is None:
            raise NotFound(f'{kind} "{name}" not found in namespace {ns}')
        log.info("%s %s/%s deleted", kind, ns, name)
        return {"result": "deleted", "object": gone}

    def get(self, kind: str, ns: str, name: str) -> Object:
        obj = self.store.get(kind, ns, name)
        if obj is None:
            raise NotFound(f'{kind} "{name}" not found in namespace {ns}')
        return obj

    def describe(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        obj = self.get(kind, ns, name)
        out: dict[str, Any] = {"object": obj}
        if kind == "LifelongLearningJob":
            out["workers"] = [wire(w) for w in workers_of(self.store, ns, name)]
            out["workerInfo"] = self.state.worker_info(ns, name)
        if kind in ("LifelongLearningJob", "Dataset"):
            out["waiting"] = waiting_for(obj, self.store, self.state)
        out["delivery"] = [
            {"node": r.node, "op": r.op, "rv": r.rv, "acked": r.acked, "attempts": r.attempts}
            for r in self.state.down_rows(key=(kind, ns, name))
        ]
        return out

    def worker_log(self, ns: str, name: str, query: dict[str, list[str]]) -> dict[str, Any]:
        """Part of a worker's log, fetched from its node (``cloud/logs.py``)."""
        if self.logs is None:
            raise LifelongError("this GM serves no worker logs (on Kubernetes: kubectl logs POD)")
        return self.logs.fetch_query(ns, name, query)

    def delete_node(self, node: str) -> dict[str, Any]:
        """Forget ``node`` (see the module docstring); NotFound if unknown, Conflict if online."""
        info = self.state.node(node)
        if info is None:
            raise NotFound(f'node "{node}" not found')
        if info.online:
            raise Conflict(
                f"node {node} is online; stop its LC first (a connected LC would stay unknown to "
                "the GM until it reconnects)"
            )
        if self.forget_node is not None:
            self.forget_node(node)
        else:
            self.state.forget_node(node)
        log.info("node %s deleted: the GM forgot it; resources naming it wait for it", node)
        return {"result": "deleted", "node": node}

    def nodes(self) -> list[dict[str, Any]]:
        unacked = self.state.unacked_counts()
        return [
            {
                "node": n.node,
                "online": n.online,
                "agent": n.agent,
                "lastHello": n.last_hello,
                "unacked": unacked.get(n.node, 0),
                # the node's outbox (upstream backlog) as its last hello reported it
                "outbox": {"depth": n.outbox_depth, "lowSeq": n.outbox_low, "nextSeq": n.outbox_next},
            }
            for n in self.state.nodes()
        ]


def _kind(value: str) -> str:
    if value not in READ_KINDS:
        raise NotFound(f"unknown kind {value!r}; expected one of {', '.join(READ_KINDS)}")
    return value


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api: " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value, separators=(",", ":")).encode())

    def _error(self, exc: Exception) -> None:
        given = getattr(exc, "http_status", None)  # cloud/logs.py's errors name their status
        if isinstance(given, int):
            status = HTTPStatus(given)
        elif isinstance(exc, ValidationError):
            status = HTTPStatus.BAD_REQUEST
        elif isinstance(exc, NotFound):
            status = HTTPStatus.NOT_FOUND
        elif isinstance(exc, Conflict):
            status = HTTPStatus.CONFLICT
        elif isinstance(exc, LifelongError):
            status = HTTPStatus.BAD_REQUEST
        else:
            log.exception("api request failed")
            status = HTTPStatus.INTERNAL_SERVER_ERROR
        self._json(status, {"error": str(exc), "reason": type(exc).__name__})

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        api = self.server.api
        try:
            if method == "GET" and parts == ["healthz"]:
                self._send(200, b"ok\n", "text/plain")
            elif method == "GET" and parts == ["metrics"]:
                self._send(200, api.metrics.render(), "text/plain; version=0.0.4")
            elif parts[:2] != ["api", "v1"]:
                raise NotFound(f"no such path {url.path}")
            elif method == "GET" and parts[2:] == ["nodes"]:
                self._json(200, {"items": api.nodes()})
            elif method == "DELETE" and len(parts) == 4 and parts[2] == "nodes":
                self._json(200, api.delete_node(parts[3]))
            elif method == "POST" and parts[2:] == ["apply"]:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise ValidationError([("", f"request body over {MAX_BODY} bytes")])
                try:
                    obj = json.loads(self.rfile.read(length) or b"null")
                except ValueError as exc:
                    raise ValidationError([("", f"request body is not JSON: {exc}")]) from None
                self._json(200, api.apply(obj))
            elif method == "GET" and len(parts) == 6 and parts[2] == "Worker" and parts[5] == "log":
                self._json(200, api.worker_log(parts[3], parts[4], query))
            elif method == "GET" and len(parts) == 6 and parts[2] == "describe":
                self._json(200, api.describe(_kind(parts[3]), parts[4], parts[5]))
            elif method == "GET" and len(parts) == 3:
                ns = query.get("namespace", [None])[0]
                self._json(200, {"items": list(api.store.list(_kind(parts[2]), ns))})
            elif method == "GET" and len(parts) == 5:
                self._json(200, api.get(_kind(parts[2]), parts[3], parts[4]))
            elif method == "DELETE" and len(parts) == 5:
                self._json(200, api.delete(_kind(parts[2]), parts[3], parts[4]))
            else:
                raise NotFound(f"no such path {method} {url.path}")
        except Exception as exc:
            self._error(exc)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: GMApi) -> None:
        super().__init__(address, _Handler)
        self.api = api


class ApiServer:
    """The HTTP server on its own thread."""

    def __init__(self, api: GMApi, host: str = DEFAULT_API_HOST, port: int = DEFAULT_API_PORT) -> None:
        self._server = _Server((host, port), api)
        self._thread = threading.Thread(target=self._server.serve_forever, name="gm-api", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
