"""``LocalController``: wires the LC's components together and runs them.

Called by ``commands`` (``lifelong lc``) and by tests that want an LC in-process. Threads:

    bus-<node>       the bus client's network thread (paho); only enqueues
    lc-session       applies downstream messages, sends presence + hello on every connect,
                     answers the GM's requests for workers' logs
    lc-publisher     publishes due outbox reports within the in-flight window
    lc-control       every ``poll_seconds`` or on any change: labelled samples appended to
                     their Datasets' files (``edge/labelled.py``), dataset counts, the
                     manager's decisions, the worker runtime, the workers' log bound, kept
                     worker-API reports. After a step it rests as long as the step took, so that a burst
                     of changes (a hello diff of thousands of jobs) costs at most half a core,
                     not one step per change
    lc-worker-api    the worker HTTP API (stdlib server, a thread per request)
    metrics          prometheus-client's server, when ``metrics_port`` is not 0

Shutdown (SIGTERM, ``stop()``): stop taking worker posts, finish the control step in
progress, stop the session threads, publish presence ``offline`` and disconnect cleanly,
checkpoint and close the database (every report is already committed: there is nothing else
to flush), and leave workers running (adopted on the next start) unless
``stop_workers_on_exit``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from lifelong.common.api.meta import DNS1123_SUBDOMAIN_MAX, is_dns1123_subdomain
from lifelong.common.bus import BrokerAddress, BusClient, Credentials, ReconnectPolicy, TLSParameters, Will
from lifelong.common.codec import Codec
from lifelong.common.errors import ConfigError, ValidationError
from lifelong.common.httpserver import HTTPLimits
from lifelong.common.messages import DATASET_MESSAGE_MAX, DatasetReport
from lifelong.common.statemachine import format_time
from lifelong.common.topics import RESERVED_NODE_NAMES, RESERVED_WHY, Topics
from lifelong.edge.config import LCSettings
from lifelong.edge.dataset_monitor import DatasetMonitor
from lifelong.edge.db import Store, moved_aside
from lifelong.edge.labelled import LabelledAppender
from lifelong.edge.manager import Manager, held_dataset
from lifelong.edge.metrics import ItemFailures, Snapshot, make_registry, serve
from lifelong.edge.outbox import Outbox
from lifelong.edge.session import Session
from lifelong.edge.worker_api import WaitingReports, WorkerAPI
from lifelong.edge.worker_logs import WorkerLogs
from lifelong.edge.workers import WorkerRuntime

log = logging.getLogger("lifelong.edge.service")

DATASET_KIND = "Dataset"


def check_node_name(node: str) -> None:
    """``ConfigError`` unless ``node`` can be an edge node's name: a DNS-1123 subdomain (what a
    Dataset's or a template's ``nodeName`` may say) and not reserved (``RESERVED_NODE_NAMES``)."""
    if node in RESERVED_NODE_NAMES:
        raise ConfigError(f"node name {node!r} is reserved: {RESERVED_WHY[node]}; choose another --node")
    if not is_dns1123_subdomain(node):
        raise ConfigError(
            f"node name {node!r} must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', "
            f"starting and ending with a letter or digit, at most {DNS1123_SUBDOMAIN_MAX} characters): "
            "Datasets and jobs name their nodes that way"
        )


class LocalController:
    def __init__(self, settings: LCSettings, *, reconnect: ReconnectPolicy | None = None) -> None:
        self.settings = s = settings
        check_node_name(s.node)
        address = BrokerAddress.parse(s.broker)  # a bad URL fails before anything is created
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(s.db_path, sync=s.sync)
        self.outbox = Outbox(
            self.store,
            max_depth=s.outbox_max_depth,
            window=s.outbox_window,
            ack_timeout=s.ack_timeout_seconds,
        )
        self.topics = Topics(s.prefix)
        self.wake = threading.Event()
        self._stop = threading.Event()
        self.monitor = DatasetMonitor()
        self.worker_api: WorkerAPI | None = None
        self.waiting_reports = WaitingReports(self.store, self.outbox)
        if s.worker_api_port:
            # A report must fit in one bus message with its envelope (under 1 KiB of names)
            report_limit = max(1024, s.max_payload - 8192)
            self.worker_api = WorkerAPI(
                self.store,
                self.outbox,
                s.worker_api_host,
                s.worker_api_port,
                limits=HTTPLimits(max_body=report_limit),
                max_report=report_limit,
                waiting=self.waiting_reports,
                wake=self.wake,
            )
        api_port = self.worker_api.port if self.worker_api else s.worker_api_port
        self.failures = ItemFailures(log)
        self.workers = WorkerRuntime(
            self.store,
            self.outbox,
            s.workers_dir,
            lc_server=f"http://127.0.0.1:{api_port}",
            images=s.images,
            stop_grace=s.worker_stop_grace_seconds,
            stop_on_exit=s.stop_workers_on_exit,
            failures=self.failures,
        )
        if self.worker_api is not None:
            self.worker_api.on_info = self.workers.note_info
        self.labelled = LabelledAppender(self.store, self.outbox, s.node, self.failures)
        self.worker_logs = WorkerLogs(
            s.workers_dir, node=s.node, running=self._worker_running, failures=self.failures
        )
        self.manager = Manager(
            self.store,
            self.outbox,
            s.node,
            self.monitor,
            worker_outputs=self.workers.outputs,
            failures=self.failures,
        )
        self.session = Session(
            self.store,
            self.outbox,
            node=s.node,
            topics=self.topics,
            codec=Codec(s.codec),
            max_payload=s.max_payload,
            publish=self._publish,  # called only once the bus below is connected
            on_change=self.wake.set,
            on_job_deleted=self.manager.forget,
            on_log_request=self.worker_logs.answer,
        )
        password = s.password()
        tls = (
            TLSParameters(ca_certs=s.tls_ca_file, certfile=s.tls_cert, keyfile=s.tls_key)
            if address.tls
            else None
        )
        self.bus = BusClient(
            client_id=s.node,
            address=address,
            credentials=Credentials(s.username or s.node, password),
            tls=tls,
            will=Will(self.topics.node_presence(s.node), self.session.presence_payload("offline")),
            keepalive=s.keepalive,
            reconnect=reconnect or ReconnectPolicy(),
            on_connect=self._on_connect,
            on_disconnect=self.session.handle_disconnect,
            max_inflight=max(1, min(s.outbox_window, 1000)),
        )
        self._control = threading.Thread(target=self._control_loop, name="lc-control", daemon=True)
        self._stop_metrics: Callable[[], None] | None = None
        self._warned: dict[tuple[str, str], str] = {}
        self._storage_error: str | None = None  # the last control step's database error
        self._report_datasets = False  # set on each connect: report every dataset again

    def _on_connect(self, first: bool) -> None:
        """The bus connected (again): the session says hello, and the next control step reports
        every dataset once more (a GM that forgot this node learns what the node finds)."""
        self.session.handle_connect(first)
        self._report_datasets = True
        self.wake.set()

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        self.bus.publish(topic, payload, qos=1, retain=retain)

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        self.workers.adopt()
        if s.metrics_port:
            try:
                self._stop_metrics = serve(make_registry(self.snapshot), s.metrics_host, s.metrics_port)
            except OSError as exc:
                raise ConfigError(
                    f"metrics cannot listen on {s.metrics_host}:{s.metrics_port}: {exc.strerror or exc}"
                ) from None
        if self.worker_api is not None:
            self.worker_api.start()
        self.session.start()
        self.bus.subscribe(self.topics.node_down_filter(s.node), self.session.handle_message)
        self.bus.subscribe(self.topics.gm_presence(), self.session.handle_gm_presence)
        self.bus.start()
        self._control.start()
        log.info(
            "LC %s started: broker %s, state %s, outbox epoch %s",
            s.node,
            self.bus.address,
            s.state_dir,
            self.outbox.epoch,
        )

    def stop(self) -> None:
        """Clean shutdown; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.wake.set()
        if self.worker_api is not None:
            self.worker_api.stop()
        if self._control.is_alive():
            self._control.join(30)
        self.session.stop()
        final = (self.topics.node_presence(self.settings.node), self.session.presence_payload("offline"))
        self.bus.close(final=final)
        self.workers.shutdown()
        if self._stop_metrics is not None:
            self._stop_metrics()
        self.store.close()
        log.info("LC %s stopped", self.settings.node)

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)

    # -- the control loop ---------------------------------------------------------------------
    def _control_loop(self) -> None:
        took = 0.0
        while not self._stop.is_set():
            self.wake.wait(self.settings.poll_seconds)
            if took > 0.002:
                self._stop.wait(took)  # the changes that arrive meanwhile join this step
            self.wake.clear()
            if self._stop.is_set():
                return
            t0 = time.monotonic()
            self.control_step()
            took = time.monotonic() - t0

    def control_step(self) -> None:
        storage_error: str | None = None
        steps = (
            self.labelled.step,  # first: the rows it appends are counted in this very step
            self._datasets,
            self.manager.step,
            self.workers.reconcile,
            self._rotate_logs,
            self._flush_info,
        )
        for step in steps:
            try:
                step()
            except sqlite3.OperationalError as exc:  # disk full, read-only, I/O error ...
                storage_error = str(exc)
                if storage_error != self._storage_error:
                    log.error(
                        "local database %s cannot be written (%s): the change stays pending and "
                        "is retried every poll, nothing is lost",
                        self.store.path,
                        exc,
                    )
            except Exception:
                log.exception("control step %s failed", getattr(step, "__name__", step))
        if storage_error is None and self._storage_error is not None:
            log.warning("local database %s is writable again", self.store.path)
        self._storage_error = storage_error

    def _worker_running(self, ns: str, name: str) -> bool:
        rec = self.store.get_record("workers", ns, name)
        return rec is not None and rec.get("phase") in ("Pending", "Running")

    def _rotate_logs(self) -> None:
        """Keep each running worker's log within its bound (``edge/worker_logs.py``)."""
        running = [
            (ns, name) for ns, name, rec in self.store.records("workers") if rec.get("phase") == "Running"
        ]
        self.worker_logs.rotate_running(running)

    def _flush_info(self) -> None:
        self.waiting_reports.flush()

    def _datasets(self) -> None:
        """Count every local dataset and report changed counts. One dataset that fails (the
        API models refuse it, or counting it raises) is logged once, counted
        (``item_failures{loop="datasets"}``) and skipped; the others are still counted."""
        again, self._report_datasets = self._report_datasets, False
        for ns, name in self.store.versions(DATASET_KIND):
            try:
                self._dataset(ns, name, again=again)
            except sqlite3.OperationalError:
                raise  # the database, not this dataset: handled by the control step
            except ValidationError as exc:
                self.failures.failed("datasets", f"{ns}/{name}", str(exc))
            except Exception as exc:
                self.failures.failed(
                    "datasets", f"{ns}/{name}", f"{type(exc).__name__}: {exc}", exc_info=True
                )
            else:
                self.failures.ok("datasets", f"{ns}/{name}")

    def _dataset(self, ns: str, name: str, *, again: bool = False) -> None:
        """Count one dataset; report it when its count or its state (``ok``, ``missing``,
        ``unreadable``, ``unsupported``, with the message) changed since the last report, or
        ``again`` (after a connect: the GM may have forgotten the node, or never heard it)."""
        node = self.settings.node
        held = held_dataset(self.store, ns, name)
        if held is None:
            return  # deleted since the listing
        dataset, spec = held
        if dataset.spec.node_name != node:
            return
        counted = self.monitor.count(ns, name, spec)
        rec = self.store.get_record("datasets", ns, name) or {"reported": None, "status": None}
        if counted.status != rec.get("status"):
            if counted.status == "ok":
                log.info("dataset %s/%s: %s samples", ns, name, counted.count)
            else:
                log.warning("dataset %s/%s: %s (%s)", ns, name, counted.status, counted.message)
            rec["status"] = counted.status
            rec["message"] = counted.message
            self.store.put_record("datasets", ns, name, rec)
        state = [counted.status, counted.message[:DATASET_MESSAGE_MAX]]
        count = counted.count if counted.count is not None else rec.get("reported")
        if not again and count == rec.get("reported") and state == rec.get("reportedState"):
            return
        now = format_time(datetime.now(UTC))
        body = DatasetReport(
            number_of_samples=count if isinstance(count, int) else 0,
            update_time=now,
            state=state[0],
            message=state[1] or None,
        ).to_body()
        with self.store.tx():
            seq = self.outbox.append(DATASET_KIND, ns, name, body, coalesce_key=f"{DATASET_KIND}/{ns}/{name}")
            if seq is not None:
                rec["reported"] = count
                rec["reportedState"] = state
                self.store.put_record("datasets", ns, name, rec)

    def _dataset_statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _ns, _name, rec in self.store.records("datasets"):
            status = str(rec.get("status") or "unknown")
            out[status] = out.get(status, 0) + 1
        return out

    # -- metrics --------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        st = self.outbox.stats()
        o = self.outbox
        return Snapshot(
            depth=st.depth,
            inflight=o.inflight(),
            oldest_ts=st.oldest_ts,
            reports={
                "appended": o.appended,
                "sent": o.sent,
                "resent": o.resent,
                "acked": o.acked,
                "coalesced": o.coalesced,
                "dropped": o.dropped,
                "refused": o.refused,
            },
            reconnects=max(0, self.session.connects - 1),
            downstream=dict(self.session.downstream),
            downstream_commits=self.session.commits,
            downstream_queued=self.session.queued(),
            rejected=dict(self.session.rejected),
            workers=self.workers.phases(),
            datasets=self._dataset_statuses(),
            connected=self.session.connected.is_set(),
            db_moved_aside=len(moved_aside(self.store.path)),
            item_failures=self.failures.snapshot(),
            worker_posts=self.worker_api.snapshot() if self.worker_api else {},
            worker_posts_waiting=self.waiting_reports.size(),
            unseen_samples=self.worker_api.samples_snapshot() if self.worker_api else {},
            labelled_samples=self.labelled.snapshot(),
            labelled_waiting=self.labelled.waiting,
        )
