"""The GM service: wires the store, the bookkeeping, the bus, the controllers and the HTTP API.

Who calls it: ``lifelong gm`` (``cloud/commands.py``) and tests that run a GM in-process.

Threads, one job each: the bus client's network thread (the intake's checks, then a hand-off:
no database work, no lock a worker holds), the store watch thread (hands every event to the
keyed executor; one event that cannot be handed off is logged, counted and skipped), the
executor's workers (controllers, intake and delivery work, in order per object or node), a
resend ticker (unacknowledged downstream changes, with backoff), the labelled samples' delivery
(with a knowledge base: ``cloud/controllers/knowledgebase/labelled.py``), and the HTTP server.

The knowledge base (``kb``, a ``lifelong.cloud.kb.base.KnowledgeBase``) is given by the caller;
without one the unseen-sample loop is off: ``UnseenSamples`` reports wait in the LCs' outboxes
(deferred, counted) and the API's ``kb`` routes answer 503 (docs/operations.md, "Unseen samples
and their labels").

Store events carry the object's model (the store's watch parses each object once). An object the
models refuse is logged with its key and the reason and counted (``lifelong_gm_store_refused``)
once; a job so refused gets one ``Failed`` condition from its controller, any other kind is not
handed to a controller, and the other objects go on.

Store events reach the controllers through the executor. A delete, and every event of a kind
whose handler is not level-triggered (Dataset: its handler compares the dataset's node with the
one its last event had, to re-reconcile the jobs using it), are ordered work (``submit``). An
added or modified LifelongLearningJob or Worker is a ``reconcile``: both handlers act on the
latest state (the job controller re-reads the job from the store; the Worker controller sends
the object of the event, and the newest event carries the newest object), so an event still
waiting for its turn is replaced by a newer one of the same object, and a handler that fails is
retried with the executor's per-key backoff; a delete drops such a retry.

``stop()`` is the staged shutdown SIGTERM triggers: stop taking requests, publish the
retained ``offline`` presence and disconnect (the broker drops the will), finish queued work,
close the databases.

Kubernetes mode (``store="kubernetes"``): the resources are the ``sedna.io`` custom objects
(:class:`~lifelong.cloud.stores.kubernetes.KubernetesStore`), workers are Pods
(:class:`~lifelong.cloud.runtimes.kubernetes_pods.KubernetesPodsRuntime`), and a job whose
Dataset is missing or invalid gets one ``Failed`` condition naming the reason and is parked
until its spec changes (see the lifelong-learning controller); a node that is no Node object, or
has not said hello, is waited for, not failed (docs/operations.md, "Nodes").

Leadership (Kubernetes mode, ``leader_election`` on, the default): every replica campaigns for
the ``coordination.k8s.io`` Lease ``lease_name`` in ``lease_namespace`` (``POD_NAMESPACE``,
else ``default``) as ``identity`` (``POD_NAME``, else ``HOSTNAME``) with
:class:`~lifelong.cloud.leader.LeaderElector`.

* A **follower** serves ``/healthz`` and ``/metrics`` (so its probes pass) and does nothing
  else: it does **not connect to the broker** (no presence, no will, no upstream subscription,
  which a plain MQTT subscription would otherwise deliver to every replica), does not watch
  the store or Pods, and writes nothing.
* On **becoming leader** it connects to the broker (retained ``online`` presence), subscribes
  to upstream, starts the store watch (a full list first, so every job is reconciled and every
  node is sent what it should hold), the Pod watch and the resend ticker.
* On **losing leadership** (no successful renewal for ``renew_deadline``) it stops acting at
  once: the watches and the ticker stop, the executor takes no new work, and the bus
  disconnects cleanly *without* an ``offline`` presence (a successor may already be online).
  ``lost_leadership`` is set and ``lifelong gm`` exits with status 1, so Kubernetes restarts
  the container as a fresh follower (client-go's controllers do the same). A service never
  leads twice.
* On ``stop()`` a leader first stops acting and publishes ``offline``, then releases the
  Lease, so a successor takes over on its next retry instead of waiting out the lease.

In Kubernetes mode the HTTP API serves only ``/healthz`` and ``/metrics``: resources are
read and written with kubectl (RBAC applies there); the API has no authentication and may
listen on ``0.0.0.0`` for the kubelet's probes and Prometheus.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lifelong.cloud.api_server import (
    DEFAULT_API_HOST,
    DEFAULT_API_PORT,
    ApiServer,
    GMApi,
    Tokens,
    load_tokens,
    loopback,
)
from lifelong.cloud.controllers.base import ReportRejected
from lifelong.cloud.controllers.dataset.controller import DatasetController
from lifelong.cloud.controllers.knowledgebase.labelled import LabelledDelivery, LabelledSamplesController
from lifelong.cloud.controllers.knowledgebase.status import KBStatusKeeper
from lifelong.cloud.controllers.knowledgebase.unseen import UnseenSamplesController
from lifelong.cloud.controllers.lifelonglearning.controller import LifelongLearningController, Validator
from lifelong.cloud.controllers.lifelonglearning.workerenv import DEFAULT_KB_SERVER, DEFAULT_LC_SERVER
from lifelong.cloud.controllers.registry import Registry
from lifelong.cloud.controllers.worker.controller import WorkerController
from lifelong.cloud.delivery import Delivery
from lifelong.cloud.gmstate import GMState
from lifelong.cloud.intake import MAX_NODES, Intake
from lifelong.cloud.kb.base import KnowledgeBase
from lifelong.cloud.kb_routes import KBApi
from lifelong.cloud.leader import LeaderElectionSettings, LeaderElector, default_identity
from lifelong.cloud.logs import WorkerLogRequests
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.runtimes.base import WorkerPhase, WorkerRuntime
from lifelong.cloud.runtimes.edge_process import EdgeProcessRuntime
from lifelong.cloud.stores.base import ModelCache, Object, Refused, ResourceStore, WatchEvent, parse
from lifelong.cloud.stores.sqlite import SqliteStore
from lifelong.cloud.workqueue import KeyedExecutor, Task
from lifelong.common.api import LifelongLearningJob
from lifelong.common.bus import BrokerAddress, BusClient, Credentials, ReconnectPolicy, TLSParameters, Will
from lifelong.common.codec import Codec, decode, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.errors import BusError, ConfigError, LifelongError, ProtocolError
from lifelong.common.logonce import LogOnce
from lifelong.common.sqlite import Database
from lifelong.common.topics import DEFAULT_PREFIX, GM_NAME, Topics

log = logging.getLogger(__name__)

AGENT = "lifelong-gm/0.1.0"
GM_NODE = GM_NAME
"""The ``node`` field of the GM's own presence envelope (it is no edge node)."""


@dataclass(frozen=True, slots=True)
class GMSettings:
    """Everything ``lifelong gm`` can be told. Times in seconds."""

    broker: str
    store: str = "sqlite:lifelong-gm.db"
    """``sqlite:PATH`` (standalone) or ``kubernetes``."""
    state_path: str | None = None
    """The GM's bookkeeping database; default: next to the SQLite store, or ./lifelong-gm-state.db."""
    kubeconfig: str | None = None
    api_host: str = DEFAULT_API_HOST
    api_port: int = DEFAULT_API_PORT
    """0 picks a free port (tests); the API is off with a negative port."""
    token_file: str | None = None
    """The API's bearer tokens (``TOKEN,ROLE,NAME`` lines); without it the API is open."""
    api_tls_cert: str | None = None
    """The API's certificate (PEM): with ``api_tls_key`` it serves HTTPS."""
    api_tls_key: str | None = None
    api_allow_anonymous: bool = False
    """Serve an open API (no ``token_file``) on a non-loopback ``api_host`` anyway (warned at start)."""
    prefix: str = DEFAULT_PREFIX
    codec: str = Codec.MSGPACK.value
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    tls_ca_file: str | None = None
    """mqtts:// only: the CA bundle that signed the broker's certificate (default: system CAs)."""
    tls_cert: str | None = None
    """mqtts:// only: the GM's client certificate (PEM), for brokers that require one."""
    tls_key: str | None = None
    """Its private key (PEM), when not in ``tls_cert``."""
    workers: int = 4
    """Executor threads: jobs are reconciled in parallel, each one in order."""
    resend_interval: float = 1.0
    """How often unacknowledged downstream changes are looked at."""
    resend_base: float = 2.0
    """First wait before resending an unacknowledged change; doubles per attempt..."""
    resend_cap: float = 60.0
    """...up to this. A node that reconnects gets everything at once through its hello anyway."""
    backoff_base: float = 10.0
    """Wait before retrying a failed stage on the same data (doubles per failure; Kubernetes' job backoff)."""
    backoff_cap: float = 360.0
    retry_limit: int = 6
    """Retries of a failed stage on the same data before its round is given up (Kubernetes' backoffLimit)."""
    max_payload: int | None = None
    max_nodes: int | None = None
    """Nodes the GM keeps at most (``Intake``'s bound); default ``MAX_NODES`` (10,000)."""
    lc_server: str = DEFAULT_LC_SERVER
    kb_server: str = DEFAULT_KB_SERVER
    leader_election: bool = True
    """Kubernetes mode: act only while holding the Lease. Off: act at once (one replica only!)."""
    lease_name: str = "lifelong-gm"
    lease_namespace: str | None = None
    """Default: ``POD_NAMESPACE``, else ``default``."""
    identity: str | None = None
    """This replica's name in the Lease. Default: ``POD_NAME``, else ``HOSTNAME``."""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    kube_watch_timeout: int = 30
    """Seconds one Kubernetes watch request (store, Pods) stays open before it is resumed."""
    kb_deliver_interval: float = 10.0
    """Seconds between passes of the labelled samples' delivery (a label starts one at once)."""

    @property
    def kubernetes(self) -> bool:
        return self.store == "kubernetes"

    def leader_election_settings(self) -> LeaderElectionSettings:
        try:
            return LeaderElectionSettings(
                lease_name=self.lease_name,
                namespace=self.lease_namespace or os.environ.get("POD_NAMESPACE") or "default",
                lease_duration=self.lease_duration,
                renew_deadline=self.renew_deadline,
                retry_period=self.retry_period,
                request_timeout=min(5.0, self.renew_deadline / 2),
            )
        except ValueError as exc:
            raise ConfigError(f"leader election: {exc}") from None


GM_MAX_INFLIGHT = 200
"""QoS 1 messages the GM has on the wire unconfirmed: it publishes to every node at once."""
GM_MAX_QUEUED = 50_000
"""QoS 1 messages the GM's client may hold. A reconnect storm of 1,000 nodes makes ~2,000
hellos answered by 2,000 syncs (plus upserts) within a second or two; the bus client's
default of 1,000 refused part of them (``PublishError``), and a node whose sync was refused
waited for its hello retry (10 s). Upserts are resent from the GM's state anyway; this is
about memory only (a sync or ack is ~100 B to a few kB)."""


def _open_store(settings: GMSettings) -> ResourceStore:
    if settings.store.startswith("sqlite:"):
        path = settings.store[len("sqlite:") :]
        if not path:
            raise ConfigError("--store sqlite:PATH needs a path")
        return SqliteStore(path)
    if settings.store == "kubernetes":
        try:
            from lifelong.cloud.stores import kubernetes as k8s_store
        except ImportError as exc:
            raise ConfigError(f"--store kubernetes is not available: {exc}") from None
        try:
            store: ResourceStore = k8s_store.KubernetesStore(
                kubeconfig=settings.kubeconfig,
                settings=k8s_store.KubernetesStoreSettings(watch_timeout=settings.kube_watch_timeout),
            )
        except Exception as exc:  # the kubernetes client raises several types for a bad config
            raise ConfigError(f"cannot use Kubernetes: {type(exc).__name__}: {exc}") from None
        return store
    raise ConfigError(f"--store must be sqlite:PATH or kubernetes, not {settings.store!r}")


def _state_path(settings: GMSettings) -> str:
    if settings.state_path:
        return settings.state_path
    if settings.store.startswith("sqlite:"):
        path = settings.store[len("sqlite:") :]
        if path != ":memory:":
            return str(Path(path).with_name(Path(path).name + ".gmstate"))
        return ":memory:"
    return "lifelong-gm-state.db"


def _runtime(settings: GMSettings, store: ResourceStore) -> WorkerRuntime:
    if settings.store == "kubernetes":
        try:
            from lifelong.cloud.runtimes import kubernetes_pods
        except ImportError as exc:
            raise ConfigError(f"the Kubernetes Pods runtime is not available: {exc}") from None
        from kubernetes import client

        core = client.CoreV1Api(getattr(store, "api_client", None))
        runtime: WorkerRuntime = kubernetes_pods.KubernetesPodsRuntime(
            core, settings=kubernetes_pods.PodsRuntimeSettings(watch_timeout=settings.kube_watch_timeout)
        )
        return runtime
    return EdgeProcessRuntime(store)


class _ProbesOnlyStore:
    """The store the HTTP API sees in Kubernetes mode: it refuses everything (use kubectl)."""

    MESSAGE = "in Kubernetes mode the GM's HTTP API serves only /healthz and /metrics; use kubectl"

    def _refuse(self) -> LifelongError:
        return LifelongError(self.MESSAGE)

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        raise self._refuse()

    def get_changed(
        self, kind: str, namespace: str, name: str, known: str | None
    ) -> tuple[str, Object | None] | None:
        raise self._refuse()

    def list(self, kind: str, namespace: str | None = None) -> Sequence[Object]:
        raise self._refuse()

    def apply(self, obj: Object) -> Object:
        raise self._refuse()

    def update_status(
        self, kind: str, namespace: str, name: str, status: Object, *, resource_version: str | None = None
    ) -> Object:
        raise self._refuse()

    def delete(self, kind: str, namespace: str, name: str) -> Object | None:
        raise self._refuse()

    def watch(
        self,
        handler: Callable[[WatchEvent], None],
        *,
        stop: threading.Event,
        models: ModelCache | None = None,
    ) -> None:
        raise self._refuse()

    def close(self) -> None:
        pass


def _api_security(settings: GMSettings) -> tuple[Tokens | None, tuple[str, str] | None]:
    """The API's tokens and TLS files from ``settings``; a ``ConfigError`` for an open API on a
    non-loopback address (unless allowed: then a warning at every start) or half a TLS pair."""
    tokens = load_tokens(settings.token_file) if settings.token_file else None
    if bool(settings.api_tls_cert) != bool(settings.api_tls_key):
        raise ConfigError("--api-tls-cert and --api-tls-key go together (the certificate and its key)")
    tls = (
        (settings.api_tls_cert, settings.api_tls_key)
        if settings.api_tls_cert and settings.api_tls_key
        else None
    )
    # in Kubernetes mode the API serves only the probes and /metrics: nothing to protect
    if tokens is None and not settings.kubernetes and not loopback(settings.api_host):
        if not settings.api_allow_anonymous:
            raise ConfigError(
                f"the API would be open to anyone who reaches {settings.api_host}: give --token-file "
                "(docs/security.md, HTTP APIs), bind --api-host to 127.0.0.1, or accept it with "
                "--api-allow-anonymous"
            )
        log.warning(
            "the API on %s takes no token (--api-allow-anonymous): anyone who reaches it may change "
            "and delete every resource",
            settings.api_host,
        )
    return tokens, tls


class _ProbesOnlyApi(GMApi):
    """Kubernetes mode: ``/healthz`` and ``/metrics`` only; every resource request is refused."""

    def nodes(self) -> list[dict[str, Any]]:
        raise LifelongError(_ProbesOnlyStore.MESSAGE)


RECONCILE_BURST_MAX = 256
"""The most reconciles one store transaction takes (the API's applies wait for it)."""


class ReconcileBurst:
    """A run of reconciles in one transaction of the SQLite store (``KeyedExecutor`` bursts).

    Each reconcile runs in a savepoint (one that raises rolls back alone and is retried by the
    executor as it would be alone); what it sends (``Delivery.want``/``gone``) is held back and
    sent after the commit, so the job controller's first-condition writes of many new jobs are
    one fsync and no node gets a version before it is durable. A failed commit fails every
    reconcile of the run (each retried) and sends nothing."""

    def __init__(self, db: Database, delivery: Delivery, *, limit: int = RECONCILE_BURST_MAX) -> None:
        self.db = db
        self.delivery = delivery
        self.limit = limit
        self.runs = 0
        """Store transactions made by runs (tests read it)."""

    def run(self, tasks: list[Task]) -> list[Exception | None]:
        results: list[Exception | None] = [None] * len(tasks)
        with self.delivery.deferring() as sends:
            try:
                with self.db.transaction():
                    for i, task in enumerate(tasks):
                        mark = len(sends)
                        try:
                            with self.db.transaction():  # a savepoint: this one alone rolls back
                                task()
                        except Exception as exc:
                            del sends[mark:]
                            results[i] = exc
            except Exception as exc:  # the commit failed: nothing of the run is stored
                return [exc] * len(tasks)
            finally:
                self.runs += 1
        for send in sends:
            try:
                send()
            except Exception:
                log.exception("sending an object after a burst of reconciles failed")
                self.delivery.metrics.item_failures.labels(loop="reconcile_send").inc()
        return results


class GMBus(Protocol):
    """What the service needs of its bus client (:class:`~lifelong.common.bus.BusClient`)."""

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> object: ...

    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes, bool], None]) -> object: ...

    def start(self) -> None: ...

    def close(self, *, final: tuple[str, bytes] | None = None) -> None: ...


LEVEL_TRIGGERED_KINDS = frozenset({"LifelongLearningJob", "Worker"})
"""Kinds whose added/modified events are reconciles (collapsed while waiting, retried on failure);
see the module docstring for why each is safe and why Dataset is not among them."""


class GMService:
    """One Global Manager.

    ``bus``: the bus client to use instead of one connecting to ``settings.broker`` (tests pass a
    recorder); the service does not wire its ``on_connect``.
    """

    def __init__(
        self, settings: GMSettings, *, bus: GMBus | None = None, kb: KnowledgeBase | None = None
    ) -> None:
        self.settings = settings
        self.kb = kb
        """The knowledge base (None: the unseen-sample loop is off; see ``_wire_kb``). The
        caller made it and closes it after ``stop()``."""
        BrokerAddress.parse(settings.broker)  # ConfigError before anything is opened
        lease_settings = (
            settings.leader_election_settings() if settings.kubernetes and settings.leader_election else None
        )
        self.topics = Topics(settings.prefix)
        self.codec = Codec(settings.codec)
        self.metrics = GMMetrics()
        self.store = _open_store(settings)
        self.state = GMState(_state_path(settings))
        self.executor = KeyedExecutor(
            settings.workers,
            name="gm",
            on_failure=lambda key: self.metrics.item_failures.labels(loop="executor").inc(),
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self._lock = threading.Lock()  # orders becoming leader against stop()
        self._acting = False
        self._api_started = False
        self.lost_leadership = threading.Event()
        """Set when this replica lost the Lease and stopped acting (``lifelong gm`` exits 1)."""

        will = Will(self.topics.gm_presence(), self._presence("offline"))
        credentials = Credentials(settings.username, settings.password) if settings.username else None
        self.bus: GMBus = bus or BusClient(
            # Unguessable, so that on a broker that does not bind client ids to user names nobody
            # can kick the GM by connecting with its id (docs/security.md).
            client_id=settings.client_id or f"lifelong-gm-{secrets.token_hex(8)}",
            address=settings.broker,
            credentials=credentials,
            tls=TLSParameters(
                ca_certs=settings.tls_ca_file, certfile=settings.tls_cert, keyfile=settings.tls_key
            )
            if settings.broker.startswith("mqtts://")
            else None,
            will=will,
            reconnect=ReconnectPolicy(initial=0.2, maximum=5.0, jitter=0.5),
            on_connect=self._on_connect,
            max_inflight=GM_MAX_INFLIGHT,
            max_queued=GM_MAX_QUEUED,
        )
        self.delivery = Delivery(
            self.state,
            self.topics,
            self._publish,
            metrics=self.metrics,
            codec=self.codec,
            max_payload=settings.max_payload,
            resend_base=settings.resend_base,
            resend_cap=settings.resend_cap,
        )
        self.runtime = _runtime(settings, self.store)
        validate: Validator | None = None
        if settings.kubernetes:
            from lifelong.cloud.stores.kubernetes import KubernetesStore, kubernetes_validation_condition

            if isinstance(self.store, KubernetesStore):
                validate = functools.partial(kubernetes_validation_condition, store=self.store)

        self.registry = Registry()
        # key -> why the models refuse it (the store watch's thread only; see _refused_once)
        self._refused = LogOnce()  # stored objects the models refuse, by key: the reason logged
        self.models = ModelCache()
        """The models of stored jobs and Datasets, each version parsed once: by the job controller
        (its reads and its own writes) and the store watch (which takes an own write's from here)."""
        self.jobs = LifelongLearningController(
            self.store,
            self.delivery,
            self.runtime,
            executor=self.executor,
            state=self.state,
            metrics=self.metrics,
            lc_server=settings.lc_server,
            kb_server=settings.kb_server,
            backoff_base=settings.backoff_base,
            backoff_cap=settings.backoff_cap,
            retry_limit=settings.retry_limit,
            validate=validate,
            models=self.models,
        )
        if not settings.kubernetes:
            # The Pod runtime starts its Pod watch here, so in Kubernetes mode only a leader calls it.
            self.runtime.set_phase_handler(self._on_runtime_phase)
        self.registry.register(self.jobs)
        self.datasets = DatasetController(
            self.store,
            self.delivery,
            self.metrics,
            enqueue_job=self.jobs.enqueue,
            jobs_using=self.jobs.jobs_using,
            node_known=self.state.known,
        )
        self.registry.register(self.datasets)
        if isinstance(self.runtime, EdgeProcessRuntime):
            self.registry.register(
                WorkerController(self.store, self.delivery, self.metrics, self.jobs.apply_worker_phase)
            )
        self._wire_kb()
        self.intake = Intake(
            self.state,
            self.topics,
            registry=self.registry,
            delivery=self.delivery,
            executor=self.executor,
            metrics=self.metrics,
            max_payload=settings.max_payload,
            max_nodes=settings.max_nodes or MAX_NODES,
            # reports are applied in bursts, one transaction each, on the standalone store
            store_db=self.store.db if isinstance(self.store, SqliteStore) else None,
        )
        # The job controller's reconciles queued next to each other write in one store commit.
        self._reconcile_bursts: dict[str, ReconcileBurst] = {}
        if isinstance(self.store, SqliteStore):
            self._reconcile_bursts[LifelongLearningJob.KIND] = ReconcileBurst(self.store.db, self.delivery)
        self.logs: WorkerLogRequests | None = None
        if not settings.kubernetes:
            self.logs = WorkerLogRequests(
                self.store,
                self.topics,
                self._publish,
                codec=self.codec,
                max_payload=settings.max_payload,
                node_online=self._node_online,
                reject=self.metrics.reject,
            )
            self.intake.on_log = self.logs.on_answer
        self.metrics.nodes_online_fn = lambda: sum(1 for n in self.state.nodes() if n.online)
        self.metrics.work_collapsed_fn = lambda: self.executor.collapsed
        self.metrics.unacked_fn = self.state.unacked_counts
        self.metrics.jobs_fn = self._jobs_by_state
        self.api: ApiServer | None = None
        if settings.api_port >= 0:
            if settings.kubernetes:
                api: GMApi = _ProbesOnlyApi(_ProbesOnlyStore(), self.state, self.metrics)
            else:
                api = GMApi(
                    self.store, self.state, self.metrics, forget_node=self.forget_node, models=self.models
                )
                api.logs = self.logs
                api.kb = KBApi(self.store, self.kb, on_labelled=self._on_labelled)
            try:
                tokens, tls = _api_security(settings)
                self.api = ApiServer(
                    api,
                    settings.api_host,
                    settings.api_port,
                    tokens=tokens,
                    tls=tls,
                    console=not settings.kubernetes,  # the console reads the store (standalone only)
                )
            except ConfigError:
                self.executor.shutdown()
                self.store.close()
                self.state.close()
                raise
            except OSError as exc:
                self.executor.shutdown()
                self.store.close()
                self.state.close()
                raise ConfigError(
                    f"cannot serve the API on {settings.api_host}:{settings.api_port}: {exc.strerror or exc}"
                ) from None
        self.elector: LeaderElector | None = None
        if lease_settings is not None:
            from kubernetes import client

            self.elector = LeaderElector(
                client.CoordinationV1Api(getattr(self.store, "api_client", None)),
                identity=settings.identity or default_identity(),
                settings=lease_settings,
                on_started_leading=self._on_started_leading,
                on_stopped_leading=self._on_stopped_leading,
            )

    # -- wiring ----------------------------------------------------------------------------
    def _wire_kb(self) -> None:
        """The knowledge base's part (``cloud/controllers/knowledgebase``): the ``UnseenSamples``
        and ``LabelledSamples`` controllers are registered either way, so that without a KB
        their reports are deferred (left in the LCs' outboxes, counted) rather than refused;
        with one, the labelled samples' delivery and the ``status.knowledgeBase`` keeper run."""
        kb = self.kb
        self.kb_status: KBStatusKeeper | None = None
        self.labelled: LabelledDelivery | None = None
        if kb is not None:
            self.kb_status = KBStatusKeeper(self.store, kb, self.executor, self.metrics)
            self.labelled = LabelledDelivery(
                self.store,
                self.state,
                self.delivery,
                kb,
                self.metrics,
                status=self.kb_status,
                max_payload=self.settings.max_payload,
                interval=self.settings.kb_deliver_interval,
            )
            self.jobs.on_train_completed = self.kb_status.request
        else:
            log.warning(
                "no knowledge base: unseen samples the edges report wait in their outboxes "
                '(counted in lifelong_gm_upstream_deferred_total{reason="kb_off"}), and '
                "lifelong kb samples/label answer 503"
            )
        self.registry.register(UnseenSamplesController(self.store, kb, self.metrics, status=self.kb_status))
        self.registry.register(
            LabelledSamplesController(
                self.state, self.delivery, kb, self.metrics, delivery=self.labelled, status=self.kb_status
            )
        )

    def _on_labelled(self, ns: str, name: str) -> None:
        """Samples of job ``ns/name`` were labelled through the API: deliver them, refresh its status."""
        if self.labelled is not None:
            self.labelled.poke()
        if self.kb_status is not None:
            self.kb_status.request(ns, name)

    def _presence(self, state: str) -> bytes:
        env = Envelope.new(
            node=GM_NODE, kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": state, "agent": AGENT}
        )
        return encode(env, self.codec)

    def _publish(self, topic: str, payload: bytes) -> object:
        return self.bus.publish(topic, payload, qos=1)

    def _node_online(self, node: str) -> bool | None:
        info = self.state.node(node)
        return None if info is None else info.online

    def _on_connect(self, first: bool) -> None:
        try:
            self.bus.publish(self.topics.gm_presence(), self._presence("online"), qos=1, retain=True)
        except BusError as exc:
            log.warning("could not publish GM presence: %s", exc)
        log.info("connected to the broker%s", "" if first else " again")

    def _on_gm_presence(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """Say ``online`` again when an ``offline`` GM presence appears while this GM acts.

        With replicas the presence topic is shared: the will of a previous leader that died
        (published by the broker only after its keep-alive ran out) or the ``offline`` of one
        that shut down may land after this leader said ``online``.
        """
        if self._stop.is_set() or not self._acting:
            return
        try:
            env = decode(payload)
        except ProtocolError:
            return
        body = env.body if isinstance(env.body, dict) else {}
        if body.get("state") == "offline":
            log.info("GM presence says offline (a previous GM's); saying online again")
            try:
                self.bus.publish(self.topics.gm_presence(), self._presence("online"), qos=1, retain=True)
            except BusError as exc:
                log.warning("could not publish GM presence: %s", exc)

    def _on_runtime_phase(self, phase: WorkerPhase) -> None:
        """A phase the runtime observed (the Pod watch): applied on the job's work queue."""
        key = ("LifelongLearningJob", phase.job_namespace, phase.job_name)

        def apply() -> None:
            try:
                self.jobs.apply_worker_phase(phase)
            except ReportRejected as exc:
                self.metrics.reject(exc.reason)
                log.warning("worker %s: phase %s not applied: %s", phase.worker, phase.phase, exc)

        self.executor.submit(key, apply)

    def forget_node(self, node: str) -> None:
        """``lifelong delete node``: forget the node's bookkeeping (under the delivery's node
        lock), its epoch in the intake, and mark each of its Datasets ``WaitingForNode`` (on the
        dataset's work queue). Resources naming it stay and wait for its next hello."""
        self.delivery.forget_node(node)
        self.intake.forget_node(node)
        for key in self.datasets.datasets_on(node):

            def mark(key: tuple[str, str, str] = key) -> None:
                self.datasets.mark_waiting(key, node)

            self.executor.submit(key, mark)

    def _refused_once(self, event: WatchEvent) -> bool:
        """Whether the models refuse the event's object. Each refused object is logged with its
        key and the reason and counted once (not again for its own status writes, nor for the
        same reason after a re-list); a valid event or a delete forgets it."""
        key = event.key
        if event.refused is None or event.type == "DELETED":
            self._refused.forget("store", key)
            return False
        if self._refused.first("store", key, event.refused):
            log.error("stored %s %s/%s is refused by the models: %s", *key, event.refused)
            self.metrics.store_refused.labels(kind=key[0]).inc()
        return True

    def _on_store_event(self, event: WatchEvent) -> None:
        """Hand one store event to the executor (see the module docstring). Never raises, so one
        malformed object cannot stop the store's list or watch before the objects after it."""
        try:
            key = event.key
            if self._refused_once(event) and key[0] != "LifelongLearningJob":
                return  # only the job controller hears of a refused object (it records a Failed)
            controller = self.registry.get(key[0])
            if controller is None:
                return
            handle = functools.partial(controller.on_event, event)
            if event.type == "DELETED":
                self.executor.submit(key, handle, supersede=True)
            elif key[0] in LEVEL_TRIGGERED_KINDS:
                self.executor.reconcile(key, handle, burst=self._reconcile_bursts.get(key[0]))
            else:
                self.executor.submit(key, handle)
        except Exception:
            log.exception("store event %s of %s cannot be handled; skipped", event.type, event.key)
            self.metrics.item_failures.labels(loop="store_events").inc()

    def _jobs_by_state(self) -> dict[tuple[str, str], int]:
        """Jobs by (stage, condition type) of their last condition, ("", "") without one; a job
        the models refuse is left out (the store watch counts it)."""
        out: dict[tuple[str, str], int] = {}
        for obj in self.store.list(LifelongLearningJob.KIND):
            try:
                job = parse(obj)
            except Refused:
                continue
            last = job.last_condition if isinstance(job, LifelongLearningJob) else None
            key = (last.stage.value, last.type.value) if last is not None else ("", "")
            out[key] = out.get(key, 0) + 1
        return out

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.watch(self._on_store_event, stop=self._stop, models=self.models)
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("store watch failed; restarting it")
                self._stop.wait(1.0)

    def _resend(self) -> None:
        while not self._stop.wait(self.settings.resend_interval):
            try:
                self.delivery.resend_due()
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("resending downstream changes failed")

    # -- life cycle ------------------------------------------------------------------------
    @property
    def api_port(self) -> int | None:
        return None if self.api is None else self.api.port

    @property
    def running_threads(self) -> list[str]:
        """The names of the service's own threads (store watch, resend ticker) still alive."""
        return [t.name for t in self._threads if t.is_alive()]

    @property
    def acting(self) -> bool:
        """True while this GM runs its controllers and talks to the edges (the leader's job)."""
        return self._acting

    def start(self) -> None:
        if self.elector is None:
            self._act()
        else:
            self._start_api()
            self.elector.start()
        log.info(
            "GM started: broker %s, store %s, prefix %s, API %s%s",
            self.settings.broker,
            self.settings.store,
            self.topics.prefix,
            f"{self.api.scheme}://{self.settings.api_host}:{self.api_port}" if self.api else "off",
            ""
            if self.elector is None
            else (
                f"; campaigning for lease {self.elector.settings.namespace}/"
                f"{self.elector.settings.lease_name} as {self.elector.identity}"
            ),
        )

    def _act(self) -> None:
        """Connect to the broker and start the controllers (at start, or on becoming leader)."""
        # Online is this GM's view: a node is online once it speaks to this GM (docs/operations.md).
        was_online = self.state.all_offline()
        if was_online:
            log.info("%d nodes marked offline until they say hello to this GM", was_online)
        for topic_filter in self.intake.filters():
            self.bus.subscribe(topic_filter, self.intake.on_message)
        if self.settings.kubernetes:
            self.bus.subscribe(self.topics.gm_presence(), self._on_gm_presence)
        self.bus.start()
        if self.settings.kubernetes:
            self.runtime.set_phase_handler(self._on_runtime_phase)
        self.start_controllers()
        self._acting = True

    def _start_api(self) -> None:
        if self.api is not None and not self._api_started:
            self._api_started = True
            self.api.start()

    def start_controllers(self) -> None:
        """Everything but the bus connection: the store watch, the resend ticker, the API."""
        loops: list[tuple[str, Callable[[], None]]] = [("gm-watch", self._watch), ("gm-resend", self._resend)]
        if self.labelled is not None:
            loops.append(("gm-kb-deliver", functools.partial(self.labelled.run, self._stop)))
        for name, target in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._start_api()

    # -- leadership ------------------------------------------------------------------------
    def _on_started_leading(self) -> None:
        with self._lock:
            if self._stopped or self.lost_leadership.is_set():
                log.info("leading, but this GM is stopping or lost the lease before: not acting")
                return
            log.info("this GM leads now: connecting to the broker and starting the controllers")
            try:
                self._act()
            except Exception:  # holding the Lease without acting would stall every replica
                log.exception("could not start acting as the leader; exiting")
                self.lost_leadership.set()

    def _on_stopped_leading(self) -> None:
        with self._lock:
            if self._stopped or not self._acting:
                return  # stop() released the lease, or we never acted
            log.error("lost the lease: this GM stops acting now and exits (Kubernetes restarts it)")
            self.lost_leadership.set()
            self._acting = False
            self._stop.set()
            if self.labelled is not None:
                self.labelled.poke()
            self._close_runtime()
            # A clean DISCONNECT (the broker drops the will) and no offline presence: the
            # successor may already have said online.
            self.bus.close()
            self.executor.shutdown(timeout=1.0)

    def _close_runtime(self) -> None:
        """Stop the runtime's watch. The Pod watch may sit in a long request, so this waits
        only briefly; the watch thread is a daemon and ends with its request."""
        close = getattr(self.runtime, "close", None)
        if callable(close):
            closer = threading.Thread(target=close, name="gm-runtime-close", daemon=True)
            closer.start()
            closer.join(2.0)

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        log.info("GM stopping")
        if self.api is not None and self._api_started:
            self.api.stop()
        self._stop.set()
        if self.labelled is not None:
            self.labelled.poke()  # wakes its loop, which sees the stop
        if self.lost_leadership.is_set():
            self.bus.close()
        else:
            self.bus.close(final=(self.topics.gm_presence(), self._presence("offline")))
        self.executor.shutdown()
        for thread in self._threads:
            thread.join(5)
        self._close_runtime()
        if self.elector is not None:  # after everything stopped: a successor may start at once
            self.elector.stop(release=True)
        self.store.close()
        self.state.close()
        self._acting = False
        log.info("GM stopped")

    def __enter__(self) -> GMService:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
