"""The GM's resource store in Kubernetes mode: the ``sedna.io/v1alpha1`` custom resources.

What it is for: the controllers read and write LifelongLearningJobs, Datasets and Models
through the :class:`~lifelong.cloud.stores.base.ResourceStore` interface; here that interface
is the API server, reached with the ``kubernetes`` client's ``CustomObjectsApi``. Who calls
it: the GM service when started with ``--store kubernetes``; the lifelong-learning controller
also calls :func:`kubernetes_validation_condition` (the Kubernetes half of job validation).

* ``apply`` creates the object or replaces its spec, labels and annotations, re-reading and
  retrying (bounded) when another writer got in between (409).
* ``update_status`` writes through the ``status`` subresource; without a ``resource_version``
  precondition it retries conflicts with a fresh read, with one it raises ``Conflict``.
* ``watch`` lists every kind, delivers ``ADDED`` for each object (parsed into its model once;
  one the models refuse is delivered with the reason instead, see ``WatchEvent``), then watches each kind from
  its list's resourceVersion. Each watch request is held open at most
  ``KubernetesStoreSettings.watch_timeout`` and resumed from the last version seen. When the
  server answers 410 Gone (history compacted, or an ``ERROR`` event with code 410), the kind is
  listed again and only the differences from what the handler already saw are delivered
  (``ADDED``, ``MODIFIED``, ``DELETED``): nothing missed, nothing delivered twice.

Errors: API 404 -> ``NotFound``, 409 -> ``Conflict``, any other API or connection failure ->
``StoreError`` (raised ``from`` the client's exception). The ``Worker`` kind does not exist
here: in Kubernetes mode workers are Pods (``lifelong.cloud.runtimes.kubernetes_pods``).
"""

from __future__ import annotations

import builtins
import copy
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from lifelong.cloud.stores.base import (
    Conflict,
    EventType,
    ModelCache,
    NotFound,
    Object,
    Refused,
    StoreError,
    WatchEvent,
    read,
)
from lifelong.common.api import Dataset, LifelongLearningJob
from lifelong.common.backoff import exponential_jitter, wait_seconds
from lifelong.common.stages import ConditionType
from lifelong.common.statemachine import Condition, format_time

log = logging.getLogger(__name__)

GROUP = "sedna.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Kind -> plural of every custom resource this store serves.
PLURALS: Mapping[str, str] = {
    "LifelongLearningJob": "lifelonglearningjobs",
    "Dataset": "datasets",
    "Model": "models",
}

_EVENT_TYPES: Mapping[str, EventType] = {"ADDED": "ADDED", "MODIFIED": "MODIFIED", "DELETED": "DELETED"}

REASON_DATASET_NOT_FOUND = "DatasetNotFound"
REASON_DATASET_INVALID = "DatasetInvalid"

__all__ = [
    "API_VERSION",
    "GROUP",
    "PLURALS",
    "REASON_DATASET_INVALID",
    "REASON_DATASET_NOT_FOUND",
    "VERSION",
    "KubernetesStore",
    "KubernetesStoreSettings",
    "job_problems",
    "kubernetes_validation_condition",
    "make_api_client",
]


@dataclass(frozen=True, slots=True)
class KubernetesStoreSettings:
    """Timeouts and retry bounds of the Kubernetes store."""

    #: Seconds the API server holds one watch request open (``timeoutSeconds``). The store
    #: resumes from the last resourceVersion after each; shorter means more requests, and a
    #: stopped watch is also interrupted at once, so this does not bound shutdown time.
    watch_timeout: int = 30
    #: Client-side socket timeout of non-watch requests, seconds. A hung API server must not
    #: hang a controller forever.
    request_timeout: float = 30.0
    #: Attempts of an ``apply`` or an unconditional ``update_status`` that meets 409 Conflict
    #: (each re-reads the object). Conflicts are brief races between GM replicas or with
    #: kubectl; five attempts ride them out without hiding a writer that always wins.
    conflict_attempts: int = 5
    #: Upper bound of the jittered exponential wait between conflict attempts, seconds.
    conflict_wait_max: float = 0.5
    #: Upper bound of the jittered exponential wait after a failed list or watch, seconds
    #: (the API server is down or rolling); the first wait is about 0.5 s.
    error_backoff_max: float = 30.0


def make_api_client(kubeconfig: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient``: from ``kubeconfig``, else in-cluster, else ``~/.kube/config``.

    The client's global default configuration is never touched.
    """
    from kubernetes import client
    from kubernetes import config as kube_config

    config: Any = kube_config  # partly unannotated upstream
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    return config.new_client_from_config()


@contextmanager
def _mapped_errors(what: str) -> Iterator[None]:
    """Turn the client's exceptions into the store's: 404 NotFound, 409 Conflict, else StoreError."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        if exc.status == 404:
            raise NotFound(f"{what}: not found") from exc
        if exc.status == 409:
            raise Conflict(f"{what}: conflict ({exc.reason})") from exc
        raise StoreError(f"{what}: API server answered {exc.status} {exc.reason}") from exc
    except (HTTPError, OSError) as exc:
        raise StoreError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


class KubernetesStore:
    """:class:`~lifelong.cloud.stores.base.ResourceStore` over the ``sedna.io`` CRDs.

    ``namespace`` limits lists and the watch to one namespace; ``None`` means all namespaces
    (the GM's ClusterRole allows that). Objects whose namespace is not given are put in
    ``namespace`` or ``default``.
    """

    def __init__(
        self,
        api_client: Any | None = None,
        kubeconfig: str | None = None,
        namespace: str | None = None,
        *,
        settings: KubernetesStoreSettings | None = None,
    ) -> None:
        from kubernetes import client

        self._api_client = api_client if api_client is not None else make_api_client(kubeconfig)
        self._owns_client = api_client is None
        # Any: CustomObjectsApi is annotated to return ``object``; it returns the JSON dicts.
        self._custom: Any = client.CustomObjectsApi(self._api_client)
        self._core = client.CoreV1Api(self._api_client)
        self.namespace = namespace
        self.settings = settings or KubernetesStoreSettings()
        self._conflict_retry = retry(
            retry=retry_if_exception_type(Conflict),
            stop=stop_after_attempt(self.settings.conflict_attempts),
            wait=wait_random_exponential(multiplier=0.05, max=self.settings.conflict_wait_max),
            reraise=True,
        )

    # -- helpers -------------------------------------------------------------------------

    @property
    def api_client(self) -> Any:
        return self._api_client

    @staticmethod
    def plural(kind: str) -> str:
        try:
            return PLURALS[kind]
        except KeyError:
            raise StoreError(
                f"kind {kind!r} is not served by the Kubernetes store (kinds: {', '.join(PLURALS)})"
            ) from None

    def _ns(self, namespace: str | None) -> str:
        return namespace or self.namespace or "default"

    @staticmethod
    def _typed(kind: str, obj: Object) -> Object:
        obj.setdefault("apiVersion", API_VERSION)
        obj.setdefault("kind", kind)
        return obj

    # -- ResourceStore ---------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        plural = self.plural(kind)
        try:
            with _mapped_errors(f"get {kind} {namespace}/{name}"):
                obj = self._custom.get_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    self._ns(namespace),
                    plural,
                    name,
                    _request_timeout=self.settings.request_timeout,
                )
        except NotFound:
            return None
        return self._typed(kind, obj)

    def get_changed(
        self, kind: str, namespace: str, name: str, known: str | None
    ) -> tuple[str, Object | None] | None:
        obj = self.get(kind, namespace, name)  # the API server sends the whole object anyway
        if obj is None:
            return None
        return str(_meta(obj).get("resourceVersion") or ""), obj

    def list(self, kind: str, namespace: str | None = None) -> Sequence[Object]:
        items, _ = self._list(kind, namespace)
        return items

    def _list(self, kind: str, namespace: str | None) -> tuple[builtins.list[Object], str]:
        """The objects and the list's resourceVersion (where a watch starts)."""
        plural = self.plural(kind)
        namespace = namespace or self.namespace
        timeout = self.settings.request_timeout
        with _mapped_errors(f"list {kind}"):
            if namespace is None:
                answer = self._custom.list_cluster_custom_object(
                    GROUP, VERSION, plural, _request_timeout=timeout
                )
            else:
                answer = self._custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, _request_timeout=timeout
                )
        items = [self._typed(kind, item) for item in answer.get("items") or []]
        return items, str(_meta(answer).get("resourceVersion") or "")

    def apply(self, obj: Object) -> Object:
        kind = str(obj.get("kind"))
        plural = self.plural(kind)
        meta = _meta(obj)
        name = meta.get("name")
        if not name:
            raise StoreError(f"{kind} without metadata.name")
        namespace = self._ns(meta.get("namespace"))
        wanted_meta: dict[str, Any] = {"name": name, "namespace": namespace}
        for field in ("labels", "annotations"):
            if meta.get(field):
                wanted_meta[field] = copy.deepcopy(meta[field])
        what = f"apply {kind} {namespace}/{name}"

        def attempt() -> Object:
            current = self.get(kind, namespace, name)
            if current is None:
                body: Object = {
                    "apiVersion": API_VERSION,
                    "kind": kind,
                    "metadata": wanted_meta,
                    "spec": copy.deepcopy(obj.get("spec") or {}),
                }
                with _mapped_errors(what):  # 409 AlreadyExists: someone created it; re-read
                    created = self._custom.create_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        namespace,
                        plural,
                        body,
                        _request_timeout=self.settings.request_timeout,
                    )
                log.info("created %s %s/%s", kind, namespace, name)
                return self._typed(kind, created)
            cur_meta = _meta(current)
            same = (
                current.get("spec") == obj.get("spec")
                and (cur_meta.get("labels") or {}) == (wanted_meta.get("labels") or {})
                and (cur_meta.get("annotations") or {}) == (wanted_meta.get("annotations") or {})
            )
            if same:
                return current
            body = copy.deepcopy(current)
            body["spec"] = copy.deepcopy(obj.get("spec") or {})
            for field in ("labels", "annotations"):
                if field in wanted_meta:
                    body["metadata"][field] = wanted_meta[field]
                else:
                    body["metadata"].pop(field, None)
            with _mapped_errors(what):
                replaced = self._custom.replace_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    name,
                    body,
                    _request_timeout=self.settings.request_timeout,
                )
            log.info("replaced the spec of %s %s/%s", kind, namespace, name)
            return self._typed(kind, replaced)

        result: Object = self._conflict_retry(attempt)()
        return result

    def update_status(
        self, kind: str, namespace: str, name: str, status: Object, *, resource_version: str | None = None
    ) -> Object:
        plural = self.plural(kind)
        namespace = self._ns(namespace)
        what = f"update status of {kind} {namespace}/{name}"

        def attempt() -> Object:
            current = self.get(kind, namespace, name)
            if current is None:
                raise NotFound(f"{what}: not found")
            current_rv = str(_meta(current).get("resourceVersion"))
            if resource_version is not None and current_rv != str(resource_version):
                raise Conflict(f"{what}: resourceVersion {resource_version} is not current ({current_rv})")
            body = copy.deepcopy(current)
            body["status"] = copy.deepcopy(status)
            with _mapped_errors(what):
                written = self._custom.replace_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    name,
                    body,
                    _request_timeout=self.settings.request_timeout,
                )
            return self._typed(kind, written)

        if resource_version is not None:
            return attempt()
        result: Object = self._conflict_retry(attempt)()
        return result

    def delete(self, kind: str, namespace: str, name: str) -> Object | None:
        plural = self.plural(kind)
        namespace = self._ns(namespace)
        current = self.get(kind, namespace, name)
        if current is None:
            return None
        try:
            with _mapped_errors(f"delete {kind} {namespace}/{name}"):
                self._custom.delete_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    name,
                    _request_timeout=self.settings.request_timeout,
                )
        except NotFound:
            return None
        log.info("deleted %s %s/%s", kind, namespace, name)
        return current

    def watch(
        self,
        handler: Callable[[WatchEvent], None],
        *,
        stop: threading.Event,
        models: ModelCache | None = None,
    ) -> None:
        lock = threading.Lock()

        def emit(event: WatchEvent) -> None:
            with lock:  # one event at a time, whatever stream it came from
                try:
                    handler(event)
                except Exception:
                    kind, ns, name = event.key
                    log.exception("watch handler failed on %s %s %s/%s", event.type, kind, ns, name)

        streams = [_KindStream(self, kind, emit, stop, models) for kind in PLURALS]
        for stream in streams:  # the whole list first: ADDED for everything that exists
            stream.relist_until_done()
        threads = [threading.Thread(target=s.run, name=f"k8s-watch-{s.kind}", daemon=True) for s in streams]
        for thread in threads:
            thread.start()
        try:
            stop.wait()
        finally:
            stop.set()
            for stream in streams:
                stream.interrupt()
            for thread in threads:
                thread.join(timeout=self.settings.request_timeout)

    def close(self) -> None:
        if self._owns_client:
            self._api_client.close()

    # -- Kubernetes-only -------------------------------------------------------------------

    def node_names(self) -> set[str]:
        """Names of the cluster's Node objects: the nodes a job may name."""
        with _mapped_errors("list nodes"):
            nodes = self._core.list_node(_request_timeout=self.settings.request_timeout)
        return {str(node.metadata.name) for node in nodes.items if node.metadata is not None}


class _KindStream:
    """List + watch of one kind, with what the handler has seen (to relist without repeats)."""

    def __init__(
        self,
        store: KubernetesStore,
        kind: str,
        emit: Callable[[WatchEvent], None],
        stop: threading.Event,
        models: ModelCache | None = None,
    ) -> None:
        self.store = store
        self.models = models
        self.kind = kind
        self.emit = emit
        self.stop = stop
        self.seen: dict[tuple[str, str], Object] = {}  # (namespace, name) -> last object delivered
        self.resource_version = ""
        self._watch: Any = None
        self._failures = 0
        self._failure_wait = exponential_jitter(0.5, store.settings.error_backoff_max, 0.5)

    def _backoff(self) -> None:
        """Wait after a failed list or watch: tenacity's jittered exponential wait for the number
        of failures in a row (0.5 s doubling, up to ``error_backoff_max``; reset by a good stream)."""
        self._failures += 1
        self.stop.wait(wait_seconds(self._failure_wait, self._failures))

    def relist(self) -> None:
        """List the kind; deliver the differences from ``seen``; watch from the list's version."""
        items, version = self.store._list(self.kind, None)
        fresh: dict[tuple[str, str], Object] = {}
        for item in items:
            meta = _meta(item)
            key = (str(meta.get("namespace", "")), str(meta.get("name")))
            fresh[key] = item
            before = self.seen.get(key)
            if before is None:
                self.emit(WatchEvent.of("ADDED", item, self.models))
            elif _meta(before).get("resourceVersion") != meta.get("resourceVersion"):
                self.emit(WatchEvent.of("MODIFIED", item, self.models))
        for key, gone in self.seen.items():
            if key not in fresh:
                self.emit(WatchEvent.of("DELETED", gone, self.models))
        self.seen = fresh
        self.resource_version = version
        self._failures = 0

    def relist_until_done(self) -> None:
        while not self.stop.is_set():
            try:
                self.relist()
                return
            except StoreError as exc:
                log.warning("list %s failed (%s); retrying", self.kind, exc)
                self._backoff()

    def interrupt(self) -> None:
        watch = self._watch
        if watch is not None:
            watch.stop()

    def run(self) -> None:
        from kubernetes import watch as kube_watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        store = self.store
        plural = store.plural(self.kind)
        timeout = store.settings.watch_timeout
        while not self.stop.is_set():
            if store.namespace is None:
                func: Callable[..., Any] = store._custom.list_cluster_custom_object
                args: tuple[Any, ...] = (GROUP, VERSION, plural)
            else:
                func = store._custom.list_namespaced_custom_object
                args = (GROUP, VERSION, store.namespace, plural)
            self._watch = kube_watch.Watch(return_type="object")  # type: ignore[no-untyped-call]
            if self.stop.is_set():
                return
            try:
                for event in self._watch.stream(
                    func,
                    *args,
                    resource_version=self.resource_version,
                    timeout_seconds=timeout,
                    allow_watch_bookmarks=True,
                    _request_timeout=timeout + 10,
                ):
                    if self.stop.is_set():
                        return
                    self._on_event(event)
                self._failures = 0
            except ApiException as exc:
                if self.stop.is_set():
                    return
                if exc.status == 410:
                    log.info("watch of %s expired (410 Gone); listing again", self.kind)
                    self.relist_until_done()
                    continue
                log.warning("watch of %s failed: %s %s; retrying", self.kind, exc.status, exc.reason)
                self._backoff()
            except (HTTPError, OSError, ValueError) as exc:
                if self.stop.is_set():
                    return
                log.warning("watch of %s broke: %s; retrying", self.kind, exc)
                self._backoff()
            finally:
                self._watch = None

    def _on_event(self, event: Mapping[str, Any]) -> None:
        raw_type = event.get("type")
        obj = event.get("raw_object")
        if not isinstance(obj, dict):
            return
        version = _meta(obj).get("resourceVersion")
        if raw_type == "BOOKMARK":
            if version:
                self.resource_version = str(version)
            return
        type_ = _EVENT_TYPES.get(str(raw_type))
        if type_ is None:
            return
        obj = KubernetesStore._typed(self.kind, obj)
        meta = _meta(obj)
        key = (str(meta.get("namespace", "")), str(meta.get("name")))
        if version:
            self.resource_version = str(version)
        before = self.seen.get(key)
        if type_ == "DELETED":
            if before is None:
                return  # never delivered (or already delivered as deleted by a relist)
            del self.seen[key]
        else:
            if before is not None and _meta(before).get("resourceVersion") == version:
                return  # the relist already delivered exactly this version
            self.seen[key] = obj
            type_ = "MODIFIED" if before is not None else "ADDED"
        self.emit(WatchEvent.of(type_, obj, self.models))


# --------------------------------------------------------------------------- validation


def job_problems(job: LifelongLearningJob, store: KubernetesStore) -> list[tuple[str, str, str]]:
    """What makes a job unrunnable in the cluster, as (reason, field path, message).

    The Dataset named by ``spec.dataset.name`` must exist in the job's namespace and be valid.
    Nodes are not checked: as Kubernetes takes a Pod for a node that does not exist yet (it stays
    Pending), a job naming a node that is no Node object, or whose LC has not said hello, is
    accepted and waits for it (its Dataset's ``Ready`` condition says ``WaitingForNode``; the
    delivery sends the node what it should hold at its first hello). Schema problems are the
    models' (the watch refuses those), so they are not repeated.
    """
    namespace = job.namespace
    problems: list[tuple[str, str, str]] = []
    dataset_name = job.spec.dataset.name
    try:
        dataset = read(store, Dataset, namespace, dataset_name)
    except Refused as exc:
        problems.append((REASON_DATASET_INVALID, "spec.dataset.name", str(exc)))
    else:
        if dataset is None:
            message = f"Dataset {namespace}/{dataset_name} does not exist"
            problems.append((REASON_DATASET_NOT_FOUND, "spec.dataset.name", message))
    return problems


def kubernetes_validation_condition(
    job: LifelongLearningJob, store: KubernetesStore, *, now: datetime | None = None
) -> Condition | None:
    """A ``Failed`` condition naming why the job cannot run, or None if it can.

    The stage is the job's current one (``Train`` for a new job). ``reason`` is the first
    problem's (``DatasetNotFound`` or ``DatasetInvalid``); ``message`` lists
    every problem with its field. The controller appends it; nothing is written here.
    """
    problems = job_problems(job, store)
    if not problems:
        return None
    stamp = format_time(now or datetime.now(UTC))
    return Condition(
        type=ConditionType.FAILED,
        stage=job.state[0],
        reason=problems[0][0],
        message="; ".join(f"{path}: {message}" for _, path, message in problems),
        last_transition_time=stamp,
        last_heartbeat_time=stamp,
    )


if TYPE_CHECKING:  # mypy proves the class implements the interface
    from lifelong.cloud.stores.base import ResourceStore

    def _implements(store: KubernetesStore) -> ResourceStore:
        return store
