"""The Dataset controller.

Downstream: a Dataset goes to the node named by ``spec.nodeName`` (status-only changes are not
sent back: the node is where the counts come from). Jobs using the dataset are reconciled again
when its node changes, since the dataset's node is one of theirs.

Upstream: ``report`` bodies ``{"numberOfSamples": n, "updateTime": "<RFC 3339>"}`` (the model
``DatasetReport``, parsed by the intake) set the status; a report older than the stored
``updateTime`` is stale (the outbox may coalesce counts, and an unacknowledged older one may be
resent after a newer one).

Status condition (``Ready``, one, replaced when it changes; ``lastTransitionTime`` moves only when
its ``status`` does): while the dataset's node is not known to the GM (``node_known``: it has not
said hello, or the node was deleted with ``lifelong delete node``) the controller writes
``Ready=False`` with reason ``WaitingForNode`` and a message naming the node; the Dataset is
stored and its delivery row waits, so the node gets it with its first hello's diff. From then on
each report's ``state`` sets it: ``ok`` (or no state, an older LC) ``Ready=True`` ``Counted``;
``missing`` ``FileMissing``; ``unreadable`` ``Unreadable``; ``unsupported``
``UnsupportedFormat`` (each ``Ready=False`` with the node's message); a state this version does
not know ``Ready=Unknown``. The LC reports every dataset again after each connect, so a node
that comes back replaces ``WaitingForNode`` with what it finds even when nothing changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lifelong.cloud.controllers.base import Key, Outcome, ReportRejected, Sender
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.stores.base import Conflict, NotFound, ResourceStore, WatchEvent, wire
from lifelong.common.api import Dataset
from lifelong.common.api.dataset import (
    DATASET_READY,
    REASON_COUNTED,
    REASON_FILE_MISSING,
    REASON_UNREADABLE,
    REASON_UNSUPPORTED,
    REASON_WAITING_FOR_NODE,
)
from lifelong.common.envelope import Envelope
from lifelong.common.messages import DATASET_MESSAGE_MAX, DatasetReport
from lifelong.common.statemachine import format_time, parse_time

log = logging.getLogger(__name__)

KIND = "Dataset"

_STATE_CONDITION = {
    "ok": ("True", REASON_COUNTED),
    "missing": ("False", REASON_FILE_MISSING),
    "unreadable": ("False", REASON_UNREADABLE),
    "unsupported": ("False", REASON_UNSUPPORTED),
}


def report_condition(node: str, report: DatasetReport) -> dict[str, str]:
    """The ``Ready`` condition (wire form, without its time) a report from ``node`` means."""
    state = report.state or "ok"  # an LC older than ``state`` reports only what it counted
    status, reason = _STATE_CONDITION.get(state, ("Unknown", "UnknownState"))
    if state == "ok":
        message = f"node {node} counted {report.number_of_samples} samples"
    else:
        detail = (report.message or "")[:DATASET_MESSAGE_MAX]
        message = f"node {node} reports {state!r}" + (f": {detail}" if detail else "")
    return {"type": DATASET_READY, "status": status, "reason": reason, "message": message}


def waiting_condition(node: str) -> dict[str, str]:
    """The ``Ready`` condition of a dataset whose node the GM does not know."""
    return {
        "type": DATASET_READY,
        "status": "False",
        "reason": REASON_WAITING_FOR_NODE,
        "message": f"node {node!r} has not said hello to the GM; the dataset is sent to it, "
        "and counted there, when its LC connects",
    }


def with_condition(status: dict[str, Any], cond: dict[str, str], now: str) -> dict[str, Any] | None:
    """``status`` with its ``Ready`` condition set to ``cond`` (a new dict), or None if it already
    says exactly that. ``lastTransitionTime`` is kept while the condition's ``status`` stays."""
    conds = [c for c in status.get("conditions") or () if isinstance(c, dict)]
    old = next((c for c in conds if c.get("type") == cond["type"]), None)
    if old is not None and all(old.get(k) == v for k, v in cond.items()):
        return None
    keep = old is not None and old.get("status") == cond["status"] and old.get("lastTransitionTime")
    new = {**cond, "lastTransitionTime": keep or now}
    out = dict(status)
    out["conditions"] = [c for c in conds if c.get("type") != cond["type"]] + [new]
    return out


class DatasetController:
    kind = KIND
    bursts = True
    """``apply_report`` writes only the store and the GM's bookkeeping: the intake may apply a
    burst of reports in one transaction (``cloud/intake.py``)."""

    def __init__(
        self,
        store: ResourceStore,
        downstream: Sender,
        metrics: GMMetrics,
        *,
        enqueue_job: Callable[[Key], None] | None = None,
        jobs_using: Callable[[str, str], list[Key]] | None = None,
        node_known: Callable[[str], bool] | None = None,
    ) -> None:
        self.store = store
        self.node_known = node_known
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
            if self.node_known is not None and not self.node_known(node):
                self.mark_waiting(key, node)
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

    def mark_waiting(self, key: Key, node: str) -> bool:
        """Write ``WaitingForNode`` into the dataset's status (unless it says so already, or the
        dataset moved to another node meanwhile); True if written."""
        for _ in range(8):
            obj = self.store.get(*key)
            if obj is None or obj.get("spec", {}).get("nodeName") != node:
                return False
            status = with_condition(
                dict(obj.get("status") or {}), waiting_condition(node), format_time(datetime.now(UTC))
            )
            if status is None:
                return False
            try:
                self.store.update_status(*key, status, resource_version=obj["metadata"]["resourceVersion"])
            except Conflict:
                continue
            except NotFound:
                return False
            log.info("dataset %s/%s waits for node %s (it has not said hello)", key[1], key[2], node)
            return True
        raise Conflict(f"dataset {key[1]}/{key[2]}: too many conflicting writes")

    def datasets_on(self, node: str) -> list[Key]:
        """The Datasets whose ``spec.nodeName`` is ``node`` (a list of the store)."""
        out: list[Key] = []
        for obj in self.store.list(KIND):
            if obj.get("spec", {}).get("nodeName") == node:
                meta = obj.get("metadata") or {}
                out.append((KIND, str(meta.get("namespace")), str(meta.get("name"))))
        return out

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
            cond = report_condition(node, report)
            with_cond = with_condition(status, cond, format_time(when))
            if status.get("numberOfSamples") == count and old == format_time(when) and with_cond is None:
                return Outcome.DUPLICATE
            if with_cond is not None:
                status = with_cond
                if cond["status"] != "True":
                    log.warning("dataset %s/%s: %s", env.ns, env.name, cond["message"])
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
