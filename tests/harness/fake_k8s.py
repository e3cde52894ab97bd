"""A FAKE Kubernetes API server, for unit tests of the Kubernetes mode. It is not Kubernetes.

What it is for: the Kubernetes store, the Pods runtime and the leader elector are tested with
the real ``kubernetes`` Python client talking HTTP to this server (``configuration()`` gives
a ``kubernetes.client.Configuration`` pointing at it). It implements just enough of the API:

* any namespaced resource under ``/api/v1`` and ``/apis/{group}/{version}`` (custom objects
  of ``sedna.io``, Pods, ``coordination.k8s.io`` Leases) and cluster-scoped Nodes: list (with
  equality ``labelSelector``), get, create (``409 AlreadyExists``, ``generateName``), replace
  with a ``resourceVersion`` precondition (``409 Conflict``), JSON merge patch, delete and
  delete-collection;
* the ``status`` subresource: writes to the main resource keep the status, writes to
  ``/status`` change only the status;
* API discovery of the kinds the project uses (``DISCOVERY``), enough for ``kubectl apply
  --dry-run=client`` to map kinds to resources;
* watch (``?watch=true``) as chunked JSON lines from a ``resourceVersion``, ending after
  ``timeoutSeconds``; a ``resourceVersion`` older than the last ``compact()`` gets an
  ``ERROR`` event with code 410 (as the real server does after etcd compaction).

Test hooks: ``fail_next`` (answer the next matching requests with an error status, e.g. one
409 on a status write), ``compact``, ``expire_watches`` (end every open watch with an
``ERROR`` 410 event), ``put`` (create or replace an object directly, e.g. a Node or a Pod's
status as a kubelet would), ``requests`` (the log of method and path served).

There is one global resourceVersion counter, as etcd has. No admission, no defaulting beyond
``metadata`` and a Pod's ``Pending`` phase, no authentication, no field selectors.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]

#: Resources that have a status subresource (the rest are written whole).
STATUS_SUBRESOURCE = {"pods", "lifelonglearningjobs", "datasets", "models"}
#: Cluster-scoped resources.
CLUSTER_SCOPED = {"nodes"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        if "=" not in term:  # an existence selector: the key is set
            if term.strip() not in labels:
                return False
            continue
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.lstrip("=").strip():
            return False
    return True


#: API discovery (``/api``, ``/apis``, ``/api/v1``, ``/apis/{group}/{version}``) for the kinds
#: the project uses, so that ``kubectl`` (e.g. ``apply --dry-run=client``) can map kinds to
#: resources: groupVersion -> [(plural, kind, namespaced)].
DISCOVERY: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("namespaces", "Namespace", False),
        ("nodes", "Node", False),
        ("pods", "Pod", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("configmaps", "ConfigMap", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("secrets", "Secret", True),
    ],
    "apps/v1": [("deployments", "Deployment", True)],
    "rbac.authorization.k8s.io/v1": [
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
    ],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition", False)],
    "coordination.k8s.io/v1": [("leases", "Lease", True)],
    "sedna.io/v1alpha1": [
        ("lifelonglearningjobs", "LifelongLearningJob", True),
        ("datasets", "Dataset", True),
        ("models", "Model", True),
    ],
}
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _discovery(path: str) -> Obj | None:
    """The discovery document at ``path``, or None when ``path`` is not a discovery path."""
    if path == "/version":
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-fake", "platform": "linux/amd64"}
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        }
    if path == "/apis":
        groups = []
        for gv in DISCOVERY:
            if "/" in gv:
                group, version = gv.split("/")
                ref = {"groupVersion": gv, "version": version}
                groups.append({"name": group, "versions": [ref], "preferredVersion": ref})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    gv = path.removeprefix("/api/").removeprefix("/apis/")
    if path.startswith(("/api/", "/apis/")) and gv in DISCOVERY:
        resources = [
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": _VERBS,
            }
            for plural, kind, namespaced in DISCOVERY[gv]
        ]
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}
    return None


@dataclass
class _Fault:
    method: str
    path_contains: str
    status: int
    remaining: int


@dataclass(frozen=True)
class _Route:
    resource: str  # "{groupVersion}/{plural}", e.g. "v1/pods", "sedna.io/v1alpha1/datasets"
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


class FakeKubernetesApiServer:
    """A fake, in-memory Kubernetes API server on a loopback port (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._cond = threading.Condition()
        self._rv = 0
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._events: list[tuple[int, str, str, Obj]] = []  # (rv, resource, type, object)
        self._compacted_rv = 0
        self._watch_epoch = 0
        self._closing = False
        self._faults: list[_Fault] = []
        self._uids = itertools.count(1)
        self.requests: list[tuple[str, str]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeKubernetesApiServer:
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = ThreadingHTTPServer((self._host, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-k8s", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeKubernetesApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the fake first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` that talks to this fake."""
        from kubernetes import client

        config = client.Configuration(host=self.url)
        config.retries = False
        return config

    def api_client(self) -> Any:
        from kubernetes import client

        return client.ApiClient(self.configuration())

    # -- test hooks --------------------------------------------------------------------------

    def fail_next(self, method: str, path_contains: str, status: int, *, times: int = 1) -> None:
        """Answer the next ``times`` requests of ``method`` whose path contains the text with ``status``."""
        with self._cond:
            self._faults.append(_Fault(method.upper(), path_contains, status, times))

    def clear_faults(self) -> None:
        """Forget every fault not yet used up: the server is healthy again."""
        with self._cond:
            self._faults.clear()

    def compact(self) -> int:
        """Forget the event history: a watch from any older resourceVersion gets 410 Gone."""
        with self._cond:
            self._compacted_rv = self._rv
            self._events.clear()
            return self._rv

    def expire_watches(self) -> None:
        """End every open watch with an ``ERROR`` event of code 410."""
        with self._cond:
            self._watch_epoch += 1
            self._cond.notify_all()

    def put(self, resource: str, obj: Obj) -> Obj:
        """Create or replace an object directly (status included), as a kubelet or an admin would."""
        meta = obj.setdefault("metadata", {})
        cluster_scoped = resource.rsplit("/", maxsplit=1)[-1] in CLUSTER_SCOPED
        ns = "" if cluster_scoped else meta.setdefault("namespace", "default")
        with self._cond:
            key = (resource, ns, meta["name"])
            old = self._objects.get(key)
            new = copy.deepcopy(obj)
            if old is None:
                self._fill_new_meta(new, ns)
            else:
                new["metadata"] = {**old["metadata"], **new["metadata"]}
            return self._store(key, new, "ADDED" if old is None else "MODIFIED")

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        with self._cond:
            obj = self._objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def list(self, resource: str) -> list[Obj]:
        with self._cond:
            return [copy.deepcopy(o) for (r, _, _), o in sorted(self._objects.items()) if r == resource]

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    # -- the store -------------------------------------------------------------------------

    def _fill_new_meta(self, obj: Obj, ns: str) -> None:
        meta = obj["metadata"]
        if ns:
            meta["namespace"] = ns
        meta["uid"] = f"00000000-0000-0000-0000-{next(self._uids):012d}"
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1

    def _store(self, key: tuple[str, str, str], obj: Obj, event: str) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[key] = obj
        self._events.append((self._rv, key[0], event, copy.deepcopy(obj)))
        self._cond.notify_all()
        return copy.deepcopy(obj)

    def _take_fault(self, method: str, path: str) -> int | None:
        with self._cond:
            for fault in self._faults:
                if fault.method == method and fault.path_contains in path and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault.status
        return None

    def handle(self, method: str, route: _Route, query: dict[str, str], body: Obj | None) -> tuple[int, Obj]:
        ns = route.namespace or ""
        with self._cond:
            if method == "GET" and route.name is None:
                items = [
                    copy.deepcopy(o)
                    for (r, n, _), o in sorted(self._objects.items())
                    if r == route.resource
                    and (route.namespace is None or n == ns)
                    and _matches(o["metadata"].get("labels") or {}, query.get("labelSelector"))
                ]
                return 200, {
                    "kind": "List",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self._rv)},
                    "items": items,
                }
            if method == "DELETE" and route.name is None:
                gone = []
                for key, o in sorted(self._objects.items()):
                    if (
                        key[0] == route.resource
                        and key[1] == ns
                        and _matches(o["metadata"].get("labels") or {}, query.get("labelSelector"))
                    ):
                        gone.append(self._delete(key))
                return 200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": gone}
            if method == "POST":
                assert body is not None
                meta = body.setdefault("metadata", {})
                if not meta.get("name"):
                    meta["name"] = meta.get("generateName", "x-") + uuid.uuid4().hex[:5]
                key = (route.resource, ns, meta["name"])
                if key in self._objects:
                    return 409, _status(
                        409, "AlreadyExists", f'{route.plural} "{meta["name"]}" already exists'
                    )
                obj = copy.deepcopy(body)
                self._fill_new_meta(obj, ns)
                obj["metadata"].pop("resourceVersion", None)
                if route.plural == "pods":
                    obj["status"] = {"phase": "Pending"}
                elif route.plural in STATUS_SUBRESOURCE:
                    obj.pop("status", None)  # the status subresource owns it
                return 201, self._store(key, obj, "ADDED")

            key = (route.resource, ns, route.name or "")
            current = self._objects.get(key)
            if current is None:
                return 404, _status(404, "NotFound", f'{route.plural} "{route.name}" not found')
            if method == "GET":
                return 200, copy.deepcopy(current)
            if method == "DELETE":
                return 200, self._delete(key)
            assert body is not None
            if method == "PATCH":
                body = _merge_patch(current, body)
                assert isinstance(body, dict)
                body.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
            want_rv = (body.get("metadata") or {}).get("resourceVersion")
            if want_rv and want_rv != current["metadata"]["resourceVersion"]:
                return 409, _status(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {route.plural} "{route.name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                )
            new = copy.deepcopy(current)
            has_status_sub = route.plural in STATUS_SUBRESOURCE
            if route.subresource == "status":
                new["status"] = copy.deepcopy(body.get("status"))
            else:
                for field, value in body.items():
                    if field in ("metadata", "status") and (field == "metadata" or has_status_sub):
                        continue
                    new[field] = copy.deepcopy(value)
                for field in list(new):
                    if field not in body and field not in ("metadata", "status", "apiVersion", "kind"):
                        del new[field]
                meta = body.get("metadata") or {}
                for field in ("labels", "annotations", "ownerReferences"):
                    if field in meta:
                        new["metadata"][field] = copy.deepcopy(meta[field])
                    else:
                        new["metadata"].pop(field, None)
                if new.get("spec") != current.get("spec"):
                    new["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
            if new == current:
                return 200, copy.deepcopy(current)
            return 200, self._store(key, new, "MODIFIED")

    def _delete(self, key: tuple[str, str, str]) -> Obj:
        obj = self._objects.pop(key)
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._events.append((self._rv, key[0], "DELETED", copy.deepcopy(obj)))
        self._cond.notify_all()
        return copy.deepcopy(obj)

    def watch_events(self, route: _Route, query: dict[str, str], send: Any) -> None:
        """Stream events for a watch request through ``send(dict)`` until timeout or expiry."""
        timeout = float(query.get("timeoutSeconds", "30"))
        deadline = time.monotonic() + timeout
        selector = query.get("labelSelector")
        with self._cond:
            epoch = self._watch_epoch
            rv_text = query.get("resourceVersion") or str(self._rv)
            since = int(rv_text) if rv_text.isdigit() else self._rv
            if since < self._compacted_rv:
                gone = _status(410, "Expired", f"too old resource version: {since} ({self._compacted_rv})")
                pending: list[Obj] = [{"type": "ERROR", "object": gone}]
                done = True
            else:
                pending, done = [], False
        while True:
            for event in pending:
                send(event)
            if done:
                return
            with self._cond:
                while True:
                    fresh = [
                        {"type": t, "object": copy.deepcopy(o)}
                        for rv, r, t, o in self._events
                        if rv > since
                        and r == route.resource
                        and (route.namespace is None or o["metadata"].get("namespace") == route.namespace)
                        and _matches(o["metadata"].get("labels") or {}, selector)
                    ]
                    if self._events:
                        since = max(since, self._events[-1][0])
                    if fresh:
                        pending = fresh
                        break
                    if self._closing or time.monotonic() >= deadline:
                        return
                    if self._watch_epoch != epoch:
                        pending = [
                            {"type": "ERROR", "object": _status(410, "Expired", "watch expired (fake)")}
                        ]
                        done = True
                        break
                    self._cond.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeKubernetesApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _route(self, path: str) -> _Route | None:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group_version, rest = "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest:
            return None
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return _Route(f"{group_version}/{plural}", plural, namespace, name, sub)

    def _reply(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.fake.requests.append((method, self.path))
        discovery = _discovery(split.path.rstrip("/")) if method == "GET" else None
        if discovery is not None:
            self._reply(200, discovery)
            return
        route = self._route(split.path)
        if route is None:
            self._reply(404, _status(404, "NotFound", f"the fake does not serve {split.path}"))
            return
        fault = self.fake._take_fault(method, split.path)
        if fault is not None:
            self._reply(
                fault, _status(fault, "Conflict" if fault == 409 else "Injected", "injected by the fake")
            )
            return
        if method == "GET" and query.get("watch") in ("true", "1", "True"):
            self._watch(route, query)
            return
        body = json.loads(raw) if raw else None
        code, answer = self.fake.handle(method, route, query, body)
        self._reply(code, answer)

    def _watch(self, route: _Route, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(event: Obj) -> None:
            line = json.dumps(event).encode() + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()

        try:
            self.fake.watch_events(route, query, send)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")
