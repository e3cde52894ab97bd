"""Prometheus metrics of the GM, in a registry of its own (one per ``GMMetrics``, so tests and
several GMs in one process never collide). Served at ``/metrics`` by ``cloud/api_server.py``.

Counters are bumped where things happen (``cloud/intake.py``, ``cloud/delivery.py``, the
controllers); gauges that mirror stored state (nodes online, unacknowledged downstream changes,
jobs by stage and state) are read when scraped, from callbacks the service installs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _StateCollector(Collector):
    def __init__(self, metrics: GMMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterable[Metric]:
        online = GaugeMetricFamily("lifelong_gm_nodes_online", "Edge nodes currently online")
        online.add_metric([], float(self._m.nodes_online_fn()))
        yield online
        unacked = GaugeMetricFamily(
            "lifelong_gm_downstream_unacked",
            "Downstream changes a node has not acknowledged yet",
            labels=["node"],
        )
        for node, count in sorted(self._m.unacked_fn().items()):
            unacked.add_metric([node], float(count))
        yield unacked
        jobs = GaugeMetricFamily(
            "lifelong_gm_jobs", "LifelongLearningJobs by stage and state", labels=["stage", "state"]
        )
        for (stage, state), count in sorted(self._m.jobs_fn().items()):
            jobs.add_metric([stage, state], float(count))
        yield jobs
        collapsed = CounterMetricFamily(
            "lifelong_gm_work_collapsed",
            "Reconciles that took the place of one already waiting for the same object",
        )
        collapsed.add_metric([], float(self._m.work_collapsed_fn()))
        yield collapsed


class GMMetrics:
    """Every metric of one GM."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.upstream_applied = Counter(
            "lifelong_gm_upstream_applied", "Upstream reports applied", ["kind"], registry=r
        )
        self.upstream_duplicate = Counter(
            "lifelong_gm_upstream_duplicate",
            "Upstream reports recognised as already applied (resent) or stale",
            ["kind"],
            registry=r,
        )
        self.upstream_rejected = Counter(
            "lifelong_gm_upstream_rejected", "Upstream messages rejected, by reason", ["reason"], registry=r
        )
        self.upstream_deferred = Counter(
            "lifelong_gm_upstream_deferred",
            "Upstream reports left unacknowledged to be resent later (kb_off: no knowledge base; "
            "kb_unavailable: it cannot be reached), by reason",
            ["reason"],
            registry=r,
        )
        self.kb_batches = Counter(
            "lifelong_gm_kb_batches",
            "LabelledSamples batches of labelled samples: sent towards a Dataset's node (sent) and "
            "reported appended there (delivered)",
            ["event"],
            registry=r,
        )
        self.kb_undeliverable = Counter(
            "lifelong_gm_kb_undeliverable",
            "Labelled samples that wait because their job, its Dataset or the Dataset's node is "
            "missing (counted at each delivery pass), by reason",
            ["reason"],
            registry=r,
        )
        self.kb_failures = Counter(
            "lifelong_gm_kb_failures",
            "Calls to the knowledge base that failed (it cannot be reached), by operation",
            ["op"],
            registry=r,
        )
        self.downstream_sent = Counter(
            "lifelong_gm_downstream_sent", "Downstream messages published, by operation", ["op"], registry=r
        )
        self.downstream_failed = Counter(
            "lifelong_gm_downstream_failed",
            "Downstream messages that could not be published (resent later), by reason",
            ["reason"],
            registry=r,
        )
        self.downstream_dropped = Counter(
            "lifelong_gm_downstream_dropped",
            "Downstream rows dropped because they can never be sent (not retried), by reason",
            ["reason"],
            registry=r,
        )
        self.downstream_refused = Counter(
            "lifelong_gm_downstream_refused",
            "Downstream objects a node refused (its ack says why; acknowledged, not resent), by kind",
            ["kind"],
            registry=r,
        )
        self.item_failures = Counter(
            "lifelong_gm_item_failures",
            "Items a GM loop could not handle (logged with their key, skipped or retried), by loop",
            ["loop"],
            registry=r,
        )
        self.store_refused = Counter(
            "lifelong_gm_store_refused",
            "Stored objects the API models refuse, seen by the store watch (not driven), by kind",
            ["kind"],
            registry=r,
        )
        self.applied_pruned = Counter(
            "lifelong_gm_applied_pruned",
            "Applied-report records (node, epoch, seq) forgotten before a hello pruned them, by "
            "reason (age: older than a week; count: over the per-node bound)",
            ["reason"],
            registry=r,
        )
        self.worker_info_evicted = Counter(
            "lifelong_gm_worker_info_evicted",
            "Workers' posted infos forgotten because their job holds more than the bound (oldest first)",
            registry=r,
        )
        self.console_refused = Counter(
            "lifelong_gm_console_refused",
            "Web console requests refused (unknown_token, no_session, read_only, csrf, origin, "
            "bad_form, too_large, bad_filter, method, streams_full), by reason",
            ["reason"],
            registry=r,
        )
        self.work_collapsed_fn: Callable[[], int] = lambda: 0
        self.hellos = Counter("lifelong_gm_hellos", "Hello messages handled", registry=r)
        self.reconcile_seconds = Histogram(
            "lifelong_gm_reconcile_seconds",
            "Time to reconcile one object, by kind",
            ["kind"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.reconciles_skipped = Counter(
            "lifelong_gm_reconciles_skipped_total",
            "Store events of a version a reconcile had already run to the end on (the event of "
            "its own status write), not reconciled again, by kind",
            ["kind"],
            registry=r,
        )
        self.nodes_online_fn: Callable[[], int] = lambda: 0
        self.unacked_fn: Callable[[], Mapping[str, int]] = dict
        self.jobs_fn: Callable[[], Mapping[tuple[str, str], int]] = dict
        r.register(_StateCollector(self))

    def reject(self, reason: str) -> None:
        self.upstream_rejected.labels(reason=reason).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
