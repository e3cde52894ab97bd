"""The Worker controller (standalone mode only).

A ``Worker`` object (made by ``cloud/runtimes/edge_process.py``) goes down to the node named by
its template's ``spec.nodeName``; the LC runs it as a local process. The LC's ``Worker`` reports
(``{"job", "stage", "round", "phase", "exitCode", "message", "output"}``, the model
``WorkerReport``, parsed by the intake) are recorded in the Worker's status and handed to the
lifelong-learning controller, which moves the job's stage.
A Worker whose terminal phase has been applied is deleted (its delete reaches the node, which
has nothing left to stop), so nodes do not accumulate finished workers.

Reports are applied under the *job's* work-queue key, in order with the job's other events.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from lifelong.cloud.controllers.base import Key, Outcome, ReportRejected, Sender
from lifelong.cloud.controllers.lifelonglearning.upstream import worker_phase
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.runtimes.base import WorkerPhase
from lifelong.cloud.stores.base import Conflict, NotFound, Refused, ResourceStore, WatchEvent, read, wire
from lifelong.common.api import LifelongLearningJob, Worker
from lifelong.common.envelope import Envelope
from lifelong.common.messages import WorkerReport

log = logging.getLogger(__name__)

KIND = "Worker"
JOB_KIND = "LifelongLearningJob"


class WorkerController:
    kind = KIND
    bursts = True
    """``apply_report`` writes only the store and the GM's bookkeeping: the intake may apply a
    burst of reports in one transaction (``cloud/intake.py``)."""

    def __init__(
        self,
        store: ResourceStore,
        downstream: Sender,
        metrics: GMMetrics,
        on_phase: Callable[[WorkerPhase], Outcome],
    ) -> None:
        self.store = store
        self.downstream = downstream
        self.metrics = metrics
        self.on_phase = on_phase

    def on_event(self, event: WatchEvent) -> None:
        started = time.perf_counter()
        if event.type == "DELETED":
            self.downstream.gone(event.key, event.resource_version)
        elif isinstance(event.model, Worker):
            node = event.model.node_name
            nodes = [node] if node is not None else []
            self.downstream.want(event.key, nodes, wire(event.model), include_status=False)
        self.metrics.reconcile_seconds.labels(kind=KIND).observe(time.perf_counter() - started)

    def parse_report(self, body: Any) -> WorkerReport:
        return WorkerReport.parse(body)

    def report_key(self, env: Envelope, report: WorkerReport) -> Key:
        return (JOB_KIND, env.ns, report.job)

    def apply_report(self, node: str, env: Envelope, report: WorkerReport) -> Outcome:
        phase = worker_phase(env.ns, env.name, report)
        worker = self.store.get(KIND, env.ns, env.name)
        if worker is not None:
            spec = worker.get("spec") or {}
            wnode = ((spec.get("template") or {}).get("spec") or {}).get("nodeName")
            if wnode != node:
                raise ReportRejected("wrong_node", f"worker {env.ns}/{env.name} does not run on node {node}")
            status = {
                "phase": phase.phase,
                "exitCode": phase.exit_code,
                "message": phase.message,
                "output": phase.output,
                "node": node,
            }
            try:
                self.store.update_status(KIND, env.ns, env.name, status)
            except NotFound:
                worker = None
        if worker is None:
            try:
                job = read(self.store, LifelongLearningJob, env.ns, phase.job_name)
            except Refused as exc:
                raise ReportRejected("state", f"job {env.ns}/{phase.job_name} is not valid: {exc}") from None
            if job is not None and job.spec.worker_node(phase.stage) != node:
                raise ReportRejected(
                    "wrong_node",
                    f"the {phase.stage.value} worker of {env.ns}/{phase.job_name} "
                    f"does not run on node {node}",
                )
        outcome = self.on_phase(phase)
        if phase.phase in ("Succeeded", "Failed") and worker is not None:
            with contextlib.suppress(NotFound, Conflict):
                self.store.delete(KIND, env.ns, env.name)
        return outcome
