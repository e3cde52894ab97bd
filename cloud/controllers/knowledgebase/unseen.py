"""The ``UnseenSamples`` controller: the edges' unseen samples, stored in the knowledge base.

Who calls it: ``cloud/intake.py``, for every ``report`` on ``up/UnseenSamples/{ns}/{job}`` (the
body is ``lifelong.common.kb.UnseenSamples``, parsed at the door: at most
``MAX_SAMPLES_PER_POST`` samples of one job, each checked). Nothing of this kind is stored in
the resource store, so it has no store events.

A report is applied by ``kb.add_unseen("ns/job", node, samples)``, which is idempotent per
sample id, and acknowledged only once that returned (the KB's writes are durable when it
returns). So a report resent, or sent again after a GM restart, stores nothing twice: applied
if any sample was new, a duplicate otherwise. New samples ask for a refresh of the job's
``status.knowledgeBase``.

Refused (counted by reason, logged once per node and reason, acknowledged: never applied):
a job that does not exist (``unknown_resource``) or that the models refuse (``state``), a node
that is not one of the job's (its Dataset's node or a stage's worker node: ``wrong_node``, a
node speaking for another), samples the KB refuses (``kb_refused``).

Deferred (counted, logged once a minute, **not** acknowledged, so the LC keeps the samples in
its outbox and resends them): this GM has no knowledge base (``kb_off``), or it cannot be
reached (``kb_unavailable``). Nothing is lost either way.
"""

from __future__ import annotations

import logging
from typing import Any

from lifelong.cloud.controllers.base import Key, Outcome, ReportDeferred, ReportRejected
from lifelong.cloud.controllers.knowledgebase.status import KBStatusKeeper, kb_job
from lifelong.cloud.kb.base import KBRefused, KBUnavailable, KnowledgeBase
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.stores.base import Refused, ResourceStore, WatchEvent, read
from lifelong.common.api import Dataset, LifelongLearningJob
from lifelong.common.envelope import Envelope
from lifelong.common.kb import UnseenSamples

log = logging.getLogger(__name__)

KIND = "UnseenSamples"

NO_KB = (
    "this GM has no knowledge base (start lifelong gm with one, docs/knowledge-base.md); "
    "the samples stay in the LC's outbox until it has"
)


def job_of(store: ResourceStore, ns: str, name: str) -> LifelongLearningJob:
    """The job a report names, as its model; ``ReportRejected`` if it does not exist or the
    models refuse it."""
    try:
        job = read(store, LifelongLearningJob, ns, name)
    except Refused as exc:
        raise ReportRejected("state", f"job {ns}/{name} is not valid: {exc}") from None
    if job is None:
        raise ReportRejected("unknown_resource", f"job {ns}/{name} does not exist")
    return job


def dataset_of(store: ResourceStore, job: LifelongLearningJob) -> Dataset | None:
    """The job's Dataset, None if it does not exist or the models refuse it."""
    try:
        return read(store, Dataset, job.namespace, job.spec.dataset.name)
    except Refused:
        return None


class UnseenSamplesController:
    kind = KIND

    def __init__(
        self,
        store: ResourceStore,
        kb: KnowledgeBase | None,
        metrics: GMMetrics,
        *,
        status: KBStatusKeeper | None = None,
    ) -> None:
        self.store = store
        self.kb = kb
        self.metrics = metrics
        self.status = status

    def on_event(self, event: WatchEvent) -> None:
        """No object of this kind is stored: nothing to do."""

    def parse_report(self, body: Any) -> UnseenSamples:
        return UnseenSamples.parse(body)

    def report_key(self, env: Envelope, report: UnseenSamples) -> Key:
        return (KIND, env.ns, env.name)

    def apply_report(self, node: str, env: Envelope, report: UnseenSamples) -> Outcome:
        ns, name = env.ns, env.name
        job = job_of(self.store, ns, name)
        # A worker's node is known from the job alone; the Dataset is read only for another node.
        if node not in job.spec.node_names(None) and node not in job.node_names(dataset_of(self.store, job)):
            raise ReportRejected("wrong_node", f"node {node} takes no part in job {ns}/{name}")
        if self.kb is None:
            raise ReportDeferred("kb_off", NO_KB)
        try:
            new = self.kb.add_unseen(kb_job(ns, name), node, report.samples)
        except KBUnavailable as exc:
            self.metrics.kb_failures.labels(op="add_unseen").inc()
            raise ReportDeferred("kb_unavailable", f"the knowledge base cannot be reached: {exc}") from None
        except KBRefused as exc:
            raise ReportRejected("kb_refused", f"the knowledge base refused the samples: {exc}") from None
        if not new:
            return Outcome.DUPLICATE
        log.info("job %s/%s: %d new unseen samples from node %s", ns, name, new, node)
        if self.status is not None:
            self.status.request(ns, name)
        return Outcome.APPLIED
