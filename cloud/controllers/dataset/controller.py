"""The Dataset controller.

Downstream: a Dataset goes to the node named by ``spec.nodeName`` (status-only changes are not
sent back: the node is where the counts come from). Jobs using the dataset are reconciled again
when its node changes, since the dataset's node is one of theirs.

Upstream: ``report`` bodies ``{"numberOfSamples": n, "updateTime": "<RFC 3339>"}`` (the model
``DatasetReport``, parsed by the intake) set the status; a report older than the stored
``updateTime`` is stale (the outbox may coalesce counts, and an unacknowledged older one may be
resent after a newer one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from lifelong.cloud.controllers.base import Key, Outcome, ReportRejected, Sender
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.stores.base import Conflict, NotFound, ResourceStore, WatchEvent, wire
from lifelong.common.api import Dataset
from lifelong.common.envelope import Envelope
from lifelong.common.messages import DatasetReport
from lifelong.common.statemachine import format_time, parse_time

log = logging.getLogger(__name__)

KIND = "Dataset"


class DatasetController:
    kind = KIND

    def __init__(
        self,
        store: ResourceStore,
        downstream: Sender,
        metrics: GMMetrics,
        *,
        enqueue_job: Callable[[Key], None] | None = None,
        jobs_using: Callable[[str, str], list[Key]] | None = None,
    ) -> None:
        self.store = store
        self.downstream = downstream
        self.metrics = metrics
        self.enqueue_job = enqueue_job
        self.jobs_using = jobs_using
        self._nodes: dict[Key, str | None] = {}
        self._lock = threading.Lock()

    def on_event(self, event: WatchEvent) -> None:
        started = time.perf_counter()
        key = event.key
        node: str | None = None
        if event.type == "DELETED":
            self.downstream.gone(key, event.resource_version)
        elif isinstance(event.model, Dataset):
            node = event.model.spec.node_name
            self.downstream.want(key, [node], wire(event.model), include_status=False)
        else:  # the models refuse it (the service counted it): its nodes keep what they hold
            return
        with self._lock:
            changed = key not in self._nodes or self._nodes[key] != node
            self._nodes[key] = node
            if event.type == "DELETED":
                self._nodes.pop(key, None)
        if changed and self.enqueue_job is not None and self.jobs_using is not None:
            for job_key in self.jobs_using(key[1], key[2]):  # the job controller's index
                self.enqueue_job(job_key)
        self.metrics.reconcile_seconds.labels(kind=KIND).observe(time.perf_counter() - started)

    def parse_report(self, body: Any) -> DatasetReport:
        return DatasetReport.parse(body)

    def report_key(self, env: Envelope, report: DatasetReport) -> Key:
        return (KIND, env.ns, env.name)

    def apply_report(self, node: str, env: Envelope, report: DatasetReport) -> Outcome:
        count = report.number_of_samples
        when = parse_time(report.update_time)  # the model checked it parses
        for _ in range(8):
            obj = self.store.get(KIND, env.ns, env.name)
            if obj is None:
                raise ReportRejected("unknown_resource", f"dataset {env.ns}/{env.name} does not exist")
            if obj.get("spec", {}).get("nodeName") != node:
                raise ReportRejected(
                    "wrong_node", f"dataset {env.ns}/{env.name} does not belong to node {node}"
                )
            status = dict(obj.get("status") or {})
            old = status.get("updateTime")
            try:
                if isinstance(old, str) and parse_time(old) > when:
                    return Outcome.DUPLICATE
            except ValueError:
                pass
            if status.get("numberOfSamples") == count and old == format_time(when):
                return Outcome.DUPLICATE
            status["numberOfSamples"] = count
            status["updateTime"] = format_time(when)
            try:
                self.store.update_status(
                    KIND, env.ns, env.name, status, resource_version=obj["metadata"]["resourceVersion"]
                )
            except Conflict:
                continue
            except NotFound:
                raise ReportRejected(
                    "unknown_resource", f"dataset {env.ns}/{env.name} does not exist"
                ) from None
            return Outcome.APPLIED
        raise Conflict(f"dataset {env.ns}/{env.name}: too many conflicting writes")
