"""The GM's HTTP API (standalone mode), used by ``lifelong apply/get/describe/delete``.

Served on 127.0.0.1:9300 by default by ``lifelong.common.httpserver.TLSWSGIServer`` (cheroot,
with its limits: body, headers, idle timeout, threads, queued connections), over HTTPS when
given a certificate and key. With a token file (``load_tokens``) every request but the probes
needs ``Authorization: Bearer TOKEN``: 401 without a known token, 403 for a ``read`` token on
anything but GET. Without one the API is open, and the service refuses a non-loopback address
unless told ``--api-allow-anonymous`` (docs/security.md, "HTTP APIs"). JSON in and out:

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
``GET|POST /api/v1/namespaces/{ns}/``    a job's unseen samples in the knowledge base, their
``lifelonglearningjobs/{name}/kb/...``   labels and its summary (``cloud/kb_routes.py``)
``GET|POST /ui/...``                     the web console (``cloud/console``, docs/console.md): HTML
                                         pages, its own login (a session cookie, or the same
                                         bearer tokens), server-sent events at ``/ui/events``
=======================================  =================================================

Errors are ``{"error": "<one line>", "reason": "<class>"}`` with 400 (validation, a body that is
not JSON, a ``Content-Length`` that is not a number >= 0), 401, 403, 404, 405, 409, 411 (a POST
without a length), 413 (a body over ``max_body``, refused from its ``Content-Length`` before it
is read), and for worker logs 429 (too many waiting), 502 (the node cannot give it), 504 (no
answer in time), and for the knowledge-base routes 503 (no knowledge base, or it cannot be reached).
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

import hmac
import ipaddress
import json
import logging
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from lifelong.cloud.applies import GroupCommit
from lifelong.cloud.console.app import ConsoleApp
from lifelong.cloud.console.live import Watcher
from lifelong.cloud.console.pages import digest
from lifelong.cloud.gmstate import GMState
from lifelong.cloud.kb_routes import KBApi
from lifelong.cloud.logs import WorkerLogRequests
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.runtimes.edge_process import workers_of
from lifelong.cloud.stores.base import (
    Conflict,
    ModelCache,
    NotFound,
    Object,
    Refused,
    ResourceStore,
    parse,
    read,
    wire,
)
from lifelong.common.api import (
    RESOURCE_TYPES,
    AnyResource,
    Dataset,
    LifelongLearningJob,
    parse_keeping_spec,
    parse_resource,
)
from lifelong.common.errors import ConfigError, LifelongError, ValidationError
from lifelong.common.httpserver import HTTPLimits, TLSWSGIServer
from lifelong.common.topics import RESERVED_NODE_NAMES, RESERVED_WHY

log = logging.getLogger(__name__)

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 9300
MAX_BODY = 1024 * 1024
DEFAULT_LIMITS = HTTPLimits(
    max_body=MAX_BODY, max_header=16 * 1024, idle_timeout=10, connections=64, threads=8
)
"""The GM API's server limits (docs/security.md, "HTTP APIs")."""
ROLES = ("read", "write")
OPEN_PATHS = frozenset({"/healthz", "/metrics"})
"""Answered without a token: the probes and Prometheus."""
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


def _applied_part(obj: Object) -> Object:
    """What an apply sets (the spec and other top-level fields, labels and annotations), so
    that "unchanged" does not depend on a status the controllers wrote meanwhile (which bumps
    the resourceVersion)."""
    found = obj.get("metadata")
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    out = {k: v for k, v in obj.items() if k not in ("status", "metadata")}
    out["labels"], out["annotations"] = meta.get("labels") or {}, meta.get("annotations") or {}
    return out


class GMApi:
    """What the HTTP handlers call; separate from HTTP so it is easy to test."""

    def __init__(
        self,
        store: ResourceStore,
        state: GMState,
        metrics: GMMetrics,
        *,
        forget_node: Callable[[str], None] | None = None,
        models: ModelCache | None = None,
    ) -> None:
        self.store = store
        self.state = state
        self.metrics = metrics
        self.models = models
        """Where the model of each applied object is left at its stored version (the service's
        cache: the store watch then need not parse the apply's event again)."""
        self.logs: WorkerLogRequests | None = None
        """Set by the service when workers' logs can be fetched (standalone mode)."""
        self.forget_node = forget_node
        """Forgets a node everywhere (the service's; default: only the bookkeeping)."""
        self.kb = KBApi(store, None)
        """The knowledge-base routes (the service gives them its knowledge base, if it has one)."""
        self.applies = GroupCommit(store)
        """Concurrent applies share one store commit (``cloud/applies.py``)."""

    def apply(self, obj: Any) -> dict[str, Any]:
        res = validate(obj, self.store, self.state)  # this request's own error, before any write
        key = res.key
        before, stored = self.applies.apply(key, _desired(res))
        if self.models is not None:
            self._remember(res, stored)
        if before is None:
            result = "created"
        elif _applied_part(before) == _applied_part(stored):
            result = "unchanged"
        else:
            result = "configured"
        log.info("%s %s/%s %s", key[0], key[1], key[2], result)
        return {"result": result, "object": stored}

    def _remember(self, res: AnyResource, stored: Object) -> None:
        """Leave the model of ``stored``, the object ``res`` was stored as, in the cache: its spec
        is ``res``'s (validated just now), only its metadata and status are parsed."""
        assert self.models is not None
        rv = str((stored.get("metadata") or {}).get("resourceVersion") or "")
        with suppress(ValidationError):  # a status the models refuse: the watch says so
            self.models.put(res.key, rv, parse_keeping_spec(res, stored))

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


# -- authentication ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    token: str
    role: str
    name: str


class Tokens:
    """The GM API's bearer tokens, from a token file: CSV lines ``TOKEN,ROLE,NAME`` (ROLE ``read``:
    GET only; ``write``: everything); blank lines and ``#`` lines are skipped."""

    def __init__(self, tokens: Iterable[Token]) -> None:
        self._tokens = [(t.token.encode(), t) for t in tokens]

    def __len__(self) -> int:
        return len(self._tokens)

    def find(self, authorization: str | None) -> Token | None:
        """The token an ``Authorization: Bearer TOKEN`` header gives, or None. Every known token
        is compared, each in constant time, so the answer's timing tells nothing about them."""
        if not authorization:
            return None
        scheme, _, given = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return None
        raw = given.strip().encode("utf-8", "surrogateescape")
        found: Token | None = None
        for secret, token in self._tokens:
            if hmac.compare_digest(secret, raw):
                found = token
        return found

    def refusal(self, method: str, authorization: str | None) -> tuple[HTTPStatus, str] | None:
        """Why a request may not go on (401: no known token; 403: a read token that does not
        ``GET``), or None; the GM API and the KB's app answer with it alike."""
        token = self.find(authorization)
        if token is None:
            return HTTPStatus.UNAUTHORIZED, "a known bearer token is needed (Authorization: Bearer)"
        if token.role != "write" and method != "GET":
            return HTTPStatus.FORBIDDEN, f"token {token.name!r} may only read (role {token.role})"
        return None


def load_tokens(path: str) -> Tokens:
    """The tokens of ``path``; a ``ConfigError`` naming the file and line (never a token) for a
    malformed one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the API token file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the API token file {path} is not UTF-8 text") from None
    tokens: dict[str, Token] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3 or not fields[0] or not fields[2]:
            raise ConfigError(f"{path} line {number}: expected TOKEN,ROLE,NAME")
        if fields[1] not in ROLES:
            raise ConfigError(f"{path} line {number}: the role must be read or write")
        if any(c.isspace() or not c.isprintable() for c in fields[0]):
            raise ConfigError(f"{path} line {number}: the token has a space or control character")
        if fields[0] in tokens:
            raise ConfigError(f"{path} line {number}: the same token as an earlier line")
        tokens[fields[0]] = Token(*fields)
    if not tokens:
        raise ConfigError(f"the API token file {path} holds no token")
    return Tokens(tokens.values())


def loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- HTTP ----------------------------------------------------------------------------------------


class _HTTPError(Exception):
    """A refusal of the request itself (not of what it asks for)."""

    def __init__(self, status: HTTPStatus, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
METHODS = frozenset({"GET", "POST", "DELETE"})


class GMApiApp:
    """The GM API as a WSGI application: authentication, then the routes of the module docstring."""

    def __init__(
        self,
        api: GMApi,
        *,
        tokens: Tokens | None = None,
        max_body: int = MAX_BODY,
        console: ConsoleApp | None = None,
    ) -> None:
        self.api = api
        self.tokens = tokens
        self.max_body = max_body
        self.console = console
        """The web console, handed every ``/ui`` request before the API's token check (it does its own)."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if self.console is not None and (path == "/ui" or path.startswith("/ui/")):
            return self.console(environ, start_response)
        try:
            status, body, content_type, extra = self._handle(environ)
        except _HTTPError as exc:
            status, body, content_type = exc.status, _error_body(str(exc), exc.reason), "application/json"
            extra = [("WWW-Authenticate", "Bearer")] if exc.status == HTTPStatus.UNAUTHORIZED else []
        except Exception as exc:
            status, body = _status_of(exc), _error_body(str(exc), type(exc).__name__)
            content_type, extra = "application/json", []
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra]
        if status >= 400 and environ.get("REQUEST_METHOD") in WRITE_METHODS:
            headers.append(("Connection", "close"))  # its body may be unread
        start_response(f"{status.value} {status.phrase}", headers)
        return [body]

    def _authorize(self, method: str, path: str, environ: dict[str, Any]) -> None:
        if self.tokens is None or path in OPEN_PATHS:
            return
        refused = self.tokens.refusal(method, environ.get("HTTP_AUTHORIZATION"))
        if refused is not None:
            status, message = refused
            raise _HTTPError(status, status.phrase.replace(" ", ""), message)

    def _body(self, environ: dict[str, Any]) -> Any:
        """The JSON body, refused from its ``Content-Length`` before a byte of it is read."""
        text = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
        if not text and not chunked:
            raise _HTTPError(
                HTTPStatus.LENGTH_REQUIRED, "LengthRequired", "the request has no Content-Length"
            )
        if text:
            if not (text.isascii() and text.isdigit()):
                raise _HTTPError(
                    HTTPStatus.BAD_REQUEST,
                    "BadRequest",
                    "Content-Length must be a whole number of bytes >= 0",
                )
            if int(text) > self.max_body:
                raise _HTTPError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "RequestEntityTooLarge",
                    f"the request body is over {self.max_body} bytes",
                )
            raw = environ["wsgi.input"].read(int(text))
        else:  # chunked: read no more than the bound allows
            raw = environ["wsgi.input"].read(self.max_body + 1)
            if len(raw) > self.max_body:
                raise _HTTPError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "RequestEntityTooLarge",
                    f"the request body is over {self.max_body} bytes",
                )
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise ValidationError([("", f"request body is not JSON: {exc}")]) from None

    def _handle(self, environ: dict[str, Any]) -> tuple[HTTPStatus, bytes, str, list[tuple[str, str]]]:
        method = str(environ.get("REQUEST_METHOD", ""))
        path = str(environ.get("PATH_INFO", "") or "/")
        if method not in METHODS:
            raise _HTTPError(
                HTTPStatus.METHOD_NOT_ALLOWED, "MethodNotAllowed", f"method {method!r} not allowed"
            )
        self._authorize(method, path, environ)
        api = self.api
        parts = [p for p in path.split("/") if p]
        query = parse_qs(str(environ.get("QUERY_STRING", "")))
        if method == "GET" and parts == ["healthz"]:
            return HTTPStatus.OK, b"ok\n", "text/plain", []
        if method == "GET" and parts == ["metrics"]:
            return HTTPStatus.OK, api.metrics.render(), "text/plain; version=0.0.4", []
        value: Any
        if parts[:2] != ["api", "v1"]:
            raise NotFound(f"no such path {path}")
        if method == "GET" and parts[2:] == ["nodes"]:
            value = {"items": api.nodes()}
        elif method == "DELETE" and len(parts) == 4 and parts[2] == "nodes":
            value = api.delete_node(parts[3])
        elif method == "POST" and parts[2:] == ["apply"]:
            value = api.apply(self._body(environ))
        elif method == "GET" and len(parts) == 6 and parts[2] == "Worker" and parts[5] == "log":
            value = api.worker_log(parts[3], parts[4], query)
        elif len(parts) == 8 and parts[2] == "namespaces" and parts[4:7:2] == ["lifelonglearningjobs", "kb"]:
            value = self._kb(method, parts, query, environ)
        elif method == "GET" and len(parts) == 6 and parts[2] == "describe":
            value = api.describe(_kind(parts[3]), parts[4], parts[5])
        elif method == "GET" and len(parts) == 3:
            ns = query.get("namespace", [None])[0]
            value = {"items": list(api.store.list(_kind(parts[2]), ns))}
        elif method == "GET" and len(parts) == 5:
            value = api.get(_kind(parts[2]), parts[3], parts[4])
        elif method == "DELETE" and len(parts) == 5:
            value = api.delete(_kind(parts[2]), parts[3], parts[4])
        else:
            raise NotFound(f"no such path {method} {path}")
        return HTTPStatus.OK, json.dumps(value, separators=(",", ":")).encode(), "application/json", []

    def _kb(self, method: str, parts: list[str], query: dict[str, list[str]], environ: Any) -> Any:
        """``/api/v1/namespaces/{ns}/lifelonglearningjobs/{name}/kb/{what}`` (``cloud/kb_routes.py``)."""
        ns, name, what = parts[3], parts[5], parts[7]
        kb = self.api.kb
        if method == "GET" and what == "samples":
            return kb.samples(ns, name, query)
        if method == "POST" and what == "labels":
            return kb.label(ns, name, self._body(environ))
        if method == "GET" and what == "summary":
            return kb.summary(ns, name)
        raise NotFound(
            f"no such path {method} .../kb/{what} (GET kb/samples, POST kb/labels, GET kb/summary)"
        )


def _error_body(message: str, reason: str) -> bytes:
    return json.dumps({"error": message, "reason": reason}, separators=(",", ":")).encode()


def _status_of(exc: Exception) -> HTTPStatus:
    given = getattr(exc, "http_status", None)  # cloud/logs.py's errors name their status
    if isinstance(given, int):
        return HTTPStatus(given)
    if isinstance(exc, NotFound):
        return HTTPStatus.NOT_FOUND
    if isinstance(exc, Conflict):
        return HTTPStatus.CONFLICT
    if isinstance(exc, LifelongError):  # ValidationError among them
        return HTTPStatus.BAD_REQUEST
    log.exception("api request failed")
    return HTTPStatus.INTERNAL_SERVER_ERROR


class ApiServer:
    """The GM API served on its own thread (``TLSWSGIServer``): HTTPS when ``tls`` gives a
    certificate and key file, bearer tokens when ``tokens`` is given. With ``console`` (standalone
    mode) the web console too, and its watcher thread, started and stopped with the server; the
    server then has ``limits.threads`` plus the console's stream bound threads, so open event
    streams never take the threads API requests need."""

    def __init__(
        self,
        api: GMApi,
        host: str = DEFAULT_API_HOST,
        port: int = DEFAULT_API_PORT,
        *,
        tokens: Tokens | None = None,
        tls: tuple[str, str] | None = None,
        limits: HTTPLimits = DEFAULT_LIMITS,
        console: bool = False,
    ) -> None:
        self.watcher: Watcher | None = None
        app: ConsoleApp | None = None
        if console:
            self.watcher = Watcher(
                lambda with_kb: digest(api, with_kb),
                on_failure=api.metrics.item_failures.labels(loop="console_watch").inc,
            )
            app = ConsoleApp(api, self.watcher, tokens=tokens, secure=tls is not None)
            limits = replace(limits, threads=limits.threads + self.watcher.max_streams)
        self.app = GMApiApp(api, tokens=tokens, max_body=limits.max_body, console=app)
        self._server = TLSWSGIServer(self.app, host, port, limits, name="gm-api", tls=tls)

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def scheme(self) -> str:
        return "https" if self._server.tls else "http"

    def start(self) -> None:
        self._server.start()
        if self.watcher is not None:
            self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()  # ends every event stream, so the server's threads stop at once
        self._server.close()
