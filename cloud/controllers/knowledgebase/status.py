"""Each job's ``status.knowledgeBase``, kept from the knowledge base's summary of the job.

Who calls it: the ``UnseenSamples`` controller (new samples stored), the GM API's ``kb/labels``
route and the labelled samples' delivery (labels given, samples delivered), and the job
controller (a Train stage completed: its worker posted the new task index to the KB before it
exited). Each says ``request(ns, name)``; the refresh runs later on the keyed executor under a key
of its own (``("KnowledgeBaseStatus", ns, name)``) as a *reconcile*, so requests that pile up
while one waits collapse into one summary read and at most one status write.

The write goes through the store like every other status change: a compare-and-swap on the
job's ``resourceVersion``, retried on ``Conflict``, replacing only ``status.knowledgeBase`` and
skipped when the summary is what the job already says (a status write sends the job to its
nodes again, so it is never written for nothing). A knowledge base that cannot be reached makes
the refresh fail; the executor retries it with its per-key backoff.
"""

from __future__ import annotations

import logging
from typing import Any

from lifelong.cloud.kb.base import KnowledgeBase
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.stores.base import Conflict, NotFound, ResourceStore
from lifelong.cloud.workqueue import KeyedExecutor
from lifelong.common.api.lifelonglearningjob import KnowledgeBase as KBStatus

log = logging.getLogger(__name__)

JOB_KIND = "LifelongLearningJob"
KEY_KIND = "KnowledgeBaseStatus"
"""The first part of the executor key a job's refresh runs under."""
CAS_RETRIES = 8


def kb_job(ns: str, name: str) -> str:
    """The name the knowledge base knows a job by: ``namespace/name``."""
    return f"{ns}/{name}"


def status_wire(summary: KBStatus) -> dict[str, Any]:
    """``status.knowledgeBase`` as stored (camelCase, no nulls)."""
    return summary.model_dump(mode="json", by_alias=True, exclude_none=True)


class KBStatusKeeper:
    def __init__(
        self, store: ResourceStore, kb: KnowledgeBase, executor: KeyedExecutor, metrics: GMMetrics
    ) -> None:
        self.store = store
        self.kb = kb
        self.executor = executor
        self.metrics = metrics

    def request(self, ns: str, name: str) -> None:
        """Refresh the job's ``status.knowledgeBase`` soon (collapsed with refreshes still waiting)."""
        self.executor.reconcile((KEY_KIND, ns, name), lambda: self._refresh_or_count(ns, name))

    def _refresh_or_count(self, ns: str, name: str) -> None:
        try:
            self.refresh(ns, name)
        except Exception:
            self.metrics.kb_failures.labels(op="summary").inc()
            raise  # the executor logs it and retries with its backoff

    def refresh(self, ns: str, name: str) -> bool:
        """Write the job's ``status.knowledgeBase`` from the KB's summary; True if it changed."""
        want = status_wire(self.kb.summary(kb_job(ns, name)))
        for _ in range(CAS_RETRIES):
            obj = self.store.get(JOB_KIND, ns, name)
            if obj is None:
                return False
            status = dict(obj.get("status") or {})
            if status.get("knowledgeBase") == want:
                return False
            status["knowledgeBase"] = want
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            try:
                self.store.update_status(
                    JOB_KIND, ns, name, status, resource_version=None if rv is None else str(rv)
                )
            except Conflict:
                continue
            except NotFound:
                return False
            log.info("job %s/%s: status.knowledgeBase updated", ns, name)
            return True
        raise Conflict(f"job {ns}/{name}: too many conflicting writes of status.knowledgeBase")
