"""The GM service: wires the store, the bookkeeping, the bus, the controllers and the HTTP API.

Who calls it: ``lifelong gm`` (``cloud/commands.py``) and tests that run a GM in-process.

Threads: the bus client's network thread (upstream checks, hand-off only), the store watch
thread (hands every event to the keyed executor), the executor's workers (controllers, in order
per object), a resend ticker (unacknowledged downstream changes, with backoff), and the HTTP
server. ``stop()`` is the staged shutdown SIGTERM triggers: stop taking requests, publish the
retained ``offline`` presence and disconnect (the broker drops the will), finish queued work,
close the databases.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.cloud.api_server import DEFAULT_API_HOST, DEFAULT_API_PORT, ApiServer, GMApi
from lifelong.cloud.controllers.base import ReportRejected
from lifelong.cloud.controllers.dataset.controller import DatasetController
from lifelong.cloud.controllers.lifelonglearning.controller import LifelongLearningController
from lifelong.cloud.controllers.lifelonglearning.workerenv import DEFAULT_KB_SERVER, DEFAULT_LC_SERVER
from lifelong.cloud.controllers.registry import Registry
from lifelong.cloud.controllers.worker.controller import WorkerController
from lifelong.cloud.downstream import Downstream
from lifelong.cloud.gmstate import GMState
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.runtimes.base import WorkerPhase, WorkerRuntime
from lifelong.cloud.runtimes.edge_process import EdgeProcessRuntime
from lifelong.cloud.stores.base import ResourceStore, WatchEvent
from lifelong.cloud.stores.sqlite import SqliteStore
from lifelong.cloud.upstream import Upstream
from lifelong.cloud.workqueue import KeyedExecutor
from lifelong.common.bus import BrokerAddress, BusClient, Credentials, ReconnectPolicy, Will
from lifelong.common.codec import Codec, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.errors import BusError, ConfigError
from lifelong.common.statemachine import Condition
from lifelong.common.topics import DEFAULT_PREFIX, Topics

log = logging.getLogger(__name__)

AGENT = "lifelong-gm/0.1.0"
GM_NODE = "gm"
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
    prefix: str = DEFAULT_PREFIX
    codec: str = Codec.MSGPACK.value
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    workers: int = 4
    """Executor threads: jobs are reconciled in parallel, each one in order."""
    resend_interval: float = 1.0
    """How often unacknowledged downstream changes are looked at."""
    resend_base: float = 2.0
    """First wait before resending an unacknowledged change; doubles per attempt..."""
    resend_cap: float = 60.0
    """...up to this. A node that reconnects gets everything at once through its hello anyway."""
    backoff_base: float = 10.0
    """Wait before restarting a failed job's training (doubles per failure; Kubernetes' job backoff)."""
    backoff_cap: float = 360.0
    max_payload: int | None = None
    lc_server: str = DEFAULT_LC_SERVER
    kb_server: str = DEFAULT_KB_SERVER


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
            store: ResourceStore = k8s_store.KubernetesStore(kubeconfig=settings.kubeconfig)
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
        runtime: WorkerRuntime = kubernetes_pods.KubernetesPodsRuntime(core)
        return runtime
    return EdgeProcessRuntime(store)


class GMService:
    """One Global Manager."""

    def __init__(self, settings: GMSettings) -> None:
        self.settings = settings
        BrokerAddress.parse(settings.broker)  # ConfigError before anything is opened
        self.topics = Topics(settings.prefix)
        self.codec = Codec(settings.codec)
        self.metrics = GMMetrics()
        self.store = _open_store(settings)
        self.state = GMState(_state_path(settings))
        self.executor = KeyedExecutor(settings.workers, name="gm")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stopped = False

        will = Will(self.topics.gm_presence(), self._presence("offline"))
        credentials = Credentials(settings.username, settings.password) if settings.username else None
        self.bus = BusClient(
            client_id=settings.client_id or f"lifelong-gm-{socket.gethostname()}-{os.getpid()}",
            address=settings.broker,
            credentials=credentials,
            will=will,
            reconnect=ReconnectPolicy(initial=0.2, maximum=5.0, jitter=0.5),
            on_connect=self._on_connect,
        )
        self.downstream = Downstream(
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
        self.registry = Registry()
        self.jobs = LifelongLearningController(
            self.store,
            self.downstream,
            self.runtime,
            executor=self.executor,
            state=self.state,
            metrics=self.metrics,
            lc_server=settings.lc_server,
            kb_server=settings.kb_server,
            backoff_base=settings.backoff_base,
            backoff_cap=settings.backoff_cap,
        )
        self.runtime.set_phase_handler(self._on_runtime_phase)
        self.registry.register(self.jobs)
        self.registry.register(
            DatasetController(self.store, self.downstream, self.metrics, enqueue_job=self.jobs.enqueue)
        )
        if isinstance(self.runtime, EdgeProcessRuntime):
            self.registry.register(
                WorkerController(self.store, self.downstream, self.metrics, self.jobs.apply_worker_phase)
            )
        self.upstream = Upstream(
            self.state,
            self.topics,
            registry=self.registry,
            downstream=self.downstream,
            executor=self.executor,
            metrics=self.metrics,
            max_payload=settings.max_payload,
        )
        self.metrics.nodes_online_fn = lambda: sum(1 for n in self.state.nodes() if n.online)
        self.metrics.unacked_fn = self.state.unacked_counts
        self.metrics.jobs_fn = self._jobs_by_state
        self.api: ApiServer | None = None
        if settings.api_port >= 0:
            try:
                self.api = ApiServer(
                    GMApi(self.store, self.state, self.metrics), settings.api_host, settings.api_port
                )
            except OSError as exc:
                self.executor.shutdown()
                self.store.close()
                self.state.close()
                raise ConfigError(
                    f"cannot serve the API on {settings.api_host}:{settings.api_port}: {exc.strerror or exc}"
                ) from None

    # -- wiring ----------------------------------------------------------------------------
    def _presence(self, state: str) -> bytes:
        env = Envelope.new(
            node=GM_NODE, kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": state, "agent": AGENT}
        )
        return encode(env, self.codec)

    def _publish(self, topic: str, payload: bytes) -> object:
        return self.bus.publish(topic, payload, qos=1)

    def _on_connect(self, first: bool) -> None:
        try:
            self.bus.publish(self.topics.gm_presence(), self._presence("online"), qos=1, retain=True)
        except BusError as exc:
            log.warning("could not publish GM presence: %s", exc)
        log.info("connected to the broker%s", "" if first else " again")

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

    def _on_store_event(self, event: WatchEvent) -> None:
        controller = self.registry.get(event.key[0])
        if controller is not None:
            self.executor.submit(event.key, lambda: controller.on_event(event))

    def _jobs_by_state(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for job in self.store.list("LifelongLearningJob"):
            conds = (job.get("status") or {}).get("conditions") or []
            if conds:
                try:
                    last = Condition.from_dict(conds[-1])
                except Exception:
                    continue
                key = (last.stage.value, last.type.value)
            else:
                key = ("", "")
            out[key] = out.get(key, 0) + 1
        return out

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.watch(self._on_store_event, stop=self._stop)
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("store watch failed; restarting it")
                self._stop.wait(1.0)

    def _resend(self) -> None:
        while not self._stop.wait(self.settings.resend_interval):
            try:
                self.downstream.resend_due()
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("resending downstream changes failed")

    # -- life cycle ------------------------------------------------------------------------
    @property
    def api_port(self) -> int | None:
        return None if self.api is None else self.api.port

    def start(self) -> None:
        for topic_filter in self.upstream.filters():
            self.bus.subscribe(topic_filter, self.upstream.on_message)
        self.bus.start()
        self.start_controllers()
        log.info(
            "GM started: broker %s, store %s, prefix %s, API %s",
            self.settings.broker,
            self.settings.store,
            self.topics.prefix,
            f"http://{self.settings.api_host}:{self.api_port}" if self.api else "off",
        )

    def start_controllers(self) -> None:
        """Everything but the bus connection: the store watch, the resend ticker, the API."""
        for name, target in (("gm-watch", self._watch), ("gm-resend", self._resend)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.api is not None:
            self.api.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        log.info("GM stopping")
        if self.api is not None:
            self.api.stop()
        self._stop.set()
        self.bus.close(final=(self.topics.gm_presence(), self._presence("offline")))
        self.executor.shutdown()
        for thread in self._threads:
            thread.join(5)
        close = getattr(self.runtime, "close", None)
        if callable(close):
            close()
        self.store.close()
        self.state.close()
        log.info("GM stopped")

    def __enter__(self) -> GMService:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
