"""Prometheus metrics of the LC, served on ``metrics_host:metrics_port`` (default 9101).

Started by the service. Every value is read at scrape time from the components' own plain
counters (outbox, session, workers) through one collector registered in a per-process
``CollectorRegistry`` (never the global one), so tests can run several LCs in one process.

    lifelong_lc_outbox_depth                    reports waiting for an ack
    lifelong_lc_outbox_inflight                 published, not yet acked
    lifelong_lc_outbox_oldest_age_seconds       age of the oldest queued report
    lifelong_lc_reports_total{result}           appended, sent, resent, acked, coalesced,
                                                dropped (coalescible refused), refused (full)
    lifelong_lc_reconnects_total                connections after the first
    lifelong_lc_downstream_total{result}        applied, stale, invalid, failed (could not be
                                                stored: rolled back alone, not acknowledged)
    lifelong_lc_downstream_commits_total        transactions of downstream messages: one per
                                                burst (all that was queued, up to 1,000),
                                                acknowledged with one ``ack`` after its commit
    lifelong_lc_downstream_queued               messages received, not yet applied
    lifelong_lc_rejected_total{reason}          messages and list items refused, by reason:
                                                invalid (a body or object the models refuse),
                                                decode, too_large, version, topic, identity, op;
                                                a sync in parts: too_many_parts, part_mismatch,
                                                duplicate_part, unknown_sync (a late copy),
                                                incomplete_sync (dropped before its last part
                                                came); sync_drop_failed (a resource a sync left
                                                out that could not be dropped; the next sync
                                                tries again)
    lifelong_lc_workers{phase}                  local worker records by phase
    lifelong_lc_datasets{status}                local datasets by file status (ok, missing, ...)
    lifelong_lc_connected                       1 while connected to the broker
    lifelong_lc_db_moved_aside                  corrupt local databases moved aside (kept in the
                                                state dir until an operator removes them)
    lifelong_lc_item_failures_total{loop}       items a loop skipped because they failed (jobs,
                                                datasets, labelled: a LabelledSamples batch that
                                                waits); each failure counted once, not per poll
    lifelong_lc_worker_posts_total{result}      worker-API posts by answer (both routes)
    lifelong_lc_unseen_samples_total{result}    unseen samples posted by workers: accepted (in
                                                the outbox), refused (their post was not taken)
    lifelong_lc_labelled_samples_total{result}  labelled samples: appended to a Dataset's file,
                                                duplicates (appended before), skipped (no line)
    lifelong_lc_labelled_batches_waiting        LabelledSamples batches that could not be
                                                appended at the last control step
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lifelong.common.logonce import LogOnce

if TYPE_CHECKING:
    # prometheus-client is imported when the metrics server starts (``make_registry``), not
    # with this module: an LC without metrics (``metrics_port`` 0) never loads it, nor its
    # HTTP server's modules (docs/performance.md, the LC's idle footprint).
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


@dataclass
class Snapshot:
    depth: int = 0
    inflight: int = 0
    oldest_ts: float | None = None
    reports: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    downstream: dict[str, int] = field(default_factory=dict)
    downstream_commits: int = 0
    downstream_queued: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    workers: dict[str, int] = field(default_factory=dict)
    datasets: dict[str, int] = field(default_factory=dict)
    connected: bool = False
    db_moved_aside: int = 0
    item_failures: dict[str, int] = field(default_factory=dict)
    worker_posts: dict[str, int] = field(default_factory=dict)
    worker_posts_waiting: tuple[int, int] = (0, 0)  # (reports, bytes)
    unseen_samples: dict[str, int] = field(default_factory=dict)
    labelled_samples: dict[str, int] = field(default_factory=dict)
    labelled_waiting: int = 0


class ItemFailures:
    """The failures of single items in the LC's loops (one job of the manager, one dataset).

    A loop over many items calls ``failed`` for the one that raised and goes on with the
    others; the failure is logged once with the item's key and counted once, until the same
    item fails differently or succeeds again (``ok``), so a poisoned item costs one log line,
    not one per poll.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._lock = threading.Lock()
        self._once = LogOnce()
        self.counts: dict[str, int] = {}

    def failed(self, loop: str, key: str, reason: str, *, exc_info: bool = False) -> None:
        """Item ``key`` of ``loop`` failed for ``reason``; it is skipped this time."""
        if not self._once.first(loop, key, reason):
            return
        with self._lock:
            self.counts[loop] = self.counts.get(loop, 0) + 1
        self._log.error("%s %s skipped: %s", loop, key, reason, exc_info=exc_info)

    def ok(self, loop: str, key: str) -> None:
        """Item ``key`` of ``loop`` went through: a later failure is logged again."""
        self._once.forget(loop, key)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def _labelled(
    family: type[CounterMetricFamily | GaugeMetricFamily],
    name: str,
    doc: str,
    label: str,
    values: dict[str, int],
) -> CounterMetricFamily | GaugeMetricFamily:
    """One metric family with a sample per label value (sorted, so the output is stable)."""
    metric = family(name, doc, labels=[label])
    for key, n in sorted(values.items()):
        metric.add_metric([key], n)
    return metric


class _LCCollector:
    """The LC's one collector (prometheus-client's ``Collector`` protocol: ``collect``)."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self._snapshot()
        yield GaugeMetricFamily("lifelong_lc_outbox_depth", "Reports waiting for an ack", value=s.depth)
        yield GaugeMetricFamily(
            "lifelong_lc_outbox_inflight", "Reports published, not yet acked", value=s.inflight
        )
        age = max(0.0, time.time() - s.oldest_ts) if s.oldest_ts else 0.0
        yield GaugeMetricFamily(
            "lifelong_lc_outbox_oldest_age_seconds", "Age of the oldest queued report", value=age
        )
        yield _labelled(
            CounterMetricFamily, "lifelong_lc_reports", "Upstream reports by outcome", "result", s.reports
        )
        yield CounterMetricFamily("lifelong_lc_reconnects", "Connections after the first", value=s.reconnects)
        yield _labelled(
            CounterMetricFamily,
            "lifelong_lc_downstream",
            "Downstream messages by outcome",
            "result",
            s.downstream,
        )
        yield CounterMetricFamily(
            "lifelong_lc_downstream_commits",
            "Transactions of downstream messages (one per burst, acknowledged with one ack)",
            value=s.downstream_commits,
        )
        yield GaugeMetricFamily(
            "lifelong_lc_downstream_queued",
            "Downstream messages received, not yet applied",
            value=s.downstream_queued,
        )
        yield _labelled(
            CounterMetricFamily,
            "lifelong_lc_rejected",
            "Messages and list items refused, by reason",
            "reason",
            s.rejected,
        )
        yield _labelled(
            GaugeMetricFamily, "lifelong_lc_workers", "Local workers by phase", "phase", s.workers
        )
        yield _labelled(
            GaugeMetricFamily, "lifelong_lc_datasets", "Local datasets by file status", "status", s.datasets
        )
        yield GaugeMetricFamily(
            "lifelong_lc_connected", "1 while connected to the broker", value=int(s.connected)
        )
        yield GaugeMetricFamily(
            "lifelong_lc_db_moved_aside",
            "Corrupt local databases moved aside in the state dir",
            value=s.db_moved_aside,
        )
        yield _labelled(
            CounterMetricFamily,
            "lifelong_lc_item_failures",
            "Items a loop skipped because they failed",
            "loop",
            s.item_failures,
        )
        yield _labelled(
            CounterMetricFamily,
            "lifelong_lc_worker_posts",
            "Posts to the worker API by answer",
            "result",
            s.worker_posts,
        )
        waiting = GaugeMetricFamily(
            "lifelong_lc_worker_posts_waiting",
            "Worker reports kept until their job reaches this LC",
            labels=["unit"],
        )
        waiting.add_metric(["reports"], s.worker_posts_waiting[0])
        waiting.add_metric(["bytes"], s.worker_posts_waiting[1])
        yield waiting
        yield _labelled(
            CounterMetricFamily,
            "lifelong_lc_unseen_samples",
            "Unseen samples posted by workers, by what became of them",
            "result",
            s.unseen_samples,
        )
        yield _labelled(
            CounterMetricFamily,
            "lifelong_lc_labelled_samples",
            "Labelled samples sent down, by what became of them",
            "result",
            s.labelled_samples,
        )
        yield GaugeMetricFamily(
            "lifelong_lc_labelled_batches_waiting",
            "LabelledSamples batches that could not be appended at the last control step",
            value=s.labelled_waiting,
        )


def make_registry(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LCCollector(snapshot))
    return registry


def serve(registry: CollectorRegistry, host: str, port: int) -> Callable[[], None]:
    """Serve ``/metrics``; returns a function that stops the server."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
