"""Labelled samples to their Dataset's node: ``LabelledSamples`` batches out, their reports in.

Who calls it: the service runs ``LabelledDelivery.run`` on a thread of its own (a pass every
``interval`` seconds, and at once after ``poke``, which the GM API's ``kb/labels`` route calls
after a label); ``cloud/intake.py`` hands the ``report`` on ``up/LabelledSamples/{ns}/{name}``
(``lifelong.common.kb.LabelledSamplesReport``) to ``LabelledSamplesController``.

A pass (``deliver``):

1. reads the knowledge base's ``undelivered()`` samples (labelled, not yet delivered; oldest
   label first; at most ``scan_limit``) and groups them by job;
2. leaves out the samples already on their way: those of a batch the delivery bookkeeping
   (``GMState.downstream``) holds as an upsert. That bookkeeping persists, so after a GM
   restart the batches in flight are known and nothing is sent twice;
3. for each job: its Dataset (``spec.dataset.name``) and that Dataset's node
   (``spec.nodeName``); the rest goes out as batches of at most ``MAX_SAMPLES_PER_POST``
   samples and about ``batch_bytes`` bytes (so an upsert stays under the payload limit), each a
   ``LabelledSamples`` object (``lifelong.common.api.labelled``) handed to the delivery
   (``want``), which sends it, resends it until the node acknowledges it, and sends it with the
   node's next hello if the node is offline.

A batch is named ``{dataset}-{hash}``: the Dataset's name (cut so the whole stays within 253
characters) and 12 hex digits of the SHA-256 of its sample ids, so the same samples make the same
name. Its ``resourceVersion`` is the time it was made, in milliseconds: a batch made again
after its delete is newer than the LC's tombstone of it. Its ``labelColumn`` is the job's
annotation ``lifelong.io/label-column``, else the Dataset's, else left out (the LC then uses the
first column of a ``csv`` Dataset; ``lifelong.common.api.labelled``).

One bad job never stops the others: a job that no longer exists, a Dataset that does not exist
or that the models refuse, is logged once (with the job) and counted in
``lifelong_gm_kb_undeliverable_total{reason}`` at every pass; its samples stay labelled in the KB
and go out once it is mended. Any other failure of one job is logged with the job and counted in
``lifelong_gm_item_failures_total{loop="kb_deliver"}``. A knowledge base that cannot be reached
ends the pass (logged once until it answers again, counted); the next pass tries again.

The report (``LabelledSamplesController``): the node appended the batch's rows (``appended``
new, ``duplicates`` already there). The batch's sample ids come from the delivery bookkeeping's
copy of the object; the KB marks them delivered (``mark_delivered``), and only then the batch
is removed (``gone``: the node gets a delete) and the report acknowledged. A KB that cannot be
reached, or none, defers the report (not acknowledged: the LC resends it). A report for a batch
this GM never sent (``unknown_resource``) or sent to another node (``wrong_node``) is refused;
one for a batch already removed is a duplicate. Passes and reports take one lock, so a pass never
sends again a batch whose report is being applied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from lifelong.cloud.controllers.base import Key, Outcome, ReportDeferred, ReportRejected, Sender
from lifelong.cloud.controllers.knowledgebase.status import KBStatusKeeper, kb_job
from lifelong.cloud.controllers.knowledgebase.unseen import NO_KB
from lifelong.cloud.gmstate import GMState
from lifelong.cloud.kb.base import KBUnavailable, KnowledgeBase, StoredSample
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.stores.base import Refused, ResourceStore, WatchEvent, read
from lifelong.common.api import Dataset, LifelongLearningJob
from lifelong.common.api.labelled import LABELLED_API_VERSION, LabelledSamples
from lifelong.common.api.meta import DNS1123_SUBDOMAIN_MAX
from lifelong.common.codec import DEFAULT_MAX_PAYLOAD
from lifelong.common.envelope import Envelope
from lifelong.common.kb import LabelledSamplesReport
from lifelong.common.logonce import LogOnce
from lifelong.common.samples import MAX_SAMPLES_PER_POST

log = logging.getLogger(__name__)

KIND = LabelledSamples.KIND
LABEL_COLUMN_ANNOTATION = "lifelong.io/label-column"
"""A job's (or its Dataset's) annotation naming the column of a ``csv`` Dataset the label goes in."""
HASH_DIGITS = 12
SCAN_LIMIT = 5000
"""Undelivered samples one pass reads from the knowledge base."""
DEFAULT_INTERVAL = 10.0
"""Seconds between passes (a label given through the GM API starts one at once)."""


def batch_name(dataset: str, ids: Sequence[str]) -> str:
    """``{dataset}-{12 hex digits of the ids' hash}``, within 253 characters, a valid object name."""
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:HASH_DIGITS]
    head = dataset[: DNS1123_SUBDOMAIN_MAX - HASH_DIGITS - 1].rstrip("-.")
    return f"{head}-{digest}"


def _annotation(obj: LifelongLearningJob | Dataset) -> str | None:
    value = (obj.metadata.annotations or {}).get(LABEL_COLUMN_ANNOTATION)
    return value or None


def label_column(job: LifelongLearningJob, dataset: Dataset) -> str | None:
    """The job's ``lifelong.io/label-column`` annotation, else the Dataset's, else None."""
    return _annotation(job) or _annotation(dataset)


def _item(sample: StoredSample) -> dict[str, Any]:
    return {"id": sample.sample.id, "row": sample.sample.row, "label": sample.label}


def batches(items: Sequence[dict[str, Any]], max_bytes: int) -> list[list[dict[str, Any]]]:
    """``items`` cut into batches of at most ``MAX_SAMPLES_PER_POST`` items and about ``max_bytes``
    bytes of compact JSON each (one item over it makes a batch alone), in order."""
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for item in items:
        cost = len(json.dumps(item, separators=(",", ":"))) + 1
        if current and (len(current) >= MAX_SAMPLES_PER_POST or size + cost > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(item)
        size += cost
    if current:
        out.append(current)
    return out


class LabelledDelivery:
    """The passes that send labelled samples out (see the module docstring)."""

    def __init__(
        self,
        store: ResourceStore,
        state: GMState,
        downstream: Sender,
        kb: KnowledgeBase,
        metrics: GMMetrics,
        *,
        status: KBStatusKeeper | None = None,
        max_payload: int | None = None,
        interval: float = DEFAULT_INTERVAL,
        scan_limit: int = SCAN_LIMIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.state = state
        self.downstream = downstream
        self.kb = kb
        self.metrics = metrics
        self.status = status
        self.interval = interval
        self.scan_limit = scan_limit
        self.clock = clock
        # Room for the envelope, the object's metadata and msgpack's differences from JSON.
        self.batch_bytes = max(4096, int((max_payload or DEFAULT_MAX_PAYLOAD) * 0.75) - 2048)
        self.lock = threading.Lock()
        """Held by a pass and by a report's application (see the module docstring)."""
        self._wake = threading.Event()
        self._logged = LogOnce()
        self._rv_lock = threading.Lock()
        self._last_rv = 0
        self.passes = 0
        """Passes completed (tests wait on it)."""

    # -- the loop --------------------------------------------------------------------------
    def poke(self) -> None:
        """Run a pass now (labels were given)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Passes until ``stop`` is set: one at once, then every ``interval`` or at a ``poke``."""
        while not stop.is_set():
            self._wake.clear()
            try:
                self.deliver()
            except Exception:
                log.exception("a pass of the labelled samples' delivery failed")
                self.metrics.item_failures.labels(loop="kb_deliver").inc()
            self.passes += 1
            self._wake.wait(self.interval)

    def next_rv(self) -> str:
        """A version newer than every one this GM gave before (milliseconds of the clock)."""
        with self._rv_lock:
            self._last_rv = max(self._last_rv + 1, int(self.clock() * 1000))
            return str(self._last_rv)

    # -- a pass ----------------------------------------------------------------------------
    def deliver(self) -> int:
        """One pass; returns the number of batches handed to the delivery."""
        with self.lock:
            try:
                pending = self.kb.undelivered(self.scan_limit)
            except KBUnavailable as exc:
                self.metrics.kb_failures.labels(op="undelivered").inc()
                if self._logged.first("kb", "undelivered", "unavailable"):
                    log.warning("labelled samples wait: the knowledge base cannot be reached: %s", exc)
                return 0
            self._logged.forget("kb", "undelivered")
            if not pending:
                return 0
            in_flight = self._in_flight()
            by_job: dict[str, list[StoredSample]] = {}
            for sample in pending:
                if sample.sample.id not in in_flight.get(sample.job, ()):
                    by_job.setdefault(sample.job, []).append(sample)
            sent = 0
            for job, samples in by_job.items():
                try:
                    sent += self._deliver_job(job, samples)
                except Exception:
                    log.exception("labelled samples of job %s: delivery failed; skipped", job)
                    self.metrics.item_failures.labels(loop="kb_deliver").inc()
            return sent

    def _in_flight(self) -> dict[str, set[str]]:
        """job ("ns/name") -> ids of the batches sent and not yet reported appended."""
        out: dict[str, set[str]] = {}
        for row in self.state.down_rows(kind=KIND):
            if row.op != "upsert" or not isinstance(row.object, dict):
                continue
            spec = row.object.get("spec") or {}
            ids = out.setdefault(kb_job(row.ns, str(spec.get("job"))), set())
            ids.update(str(s.get("id")) for s in spec.get("samples") or () if isinstance(s, dict))
        return out

    def _waits(self, job: str, reason: str, message: str, count: int) -> int:
        self.metrics.kb_undeliverable.labels(reason=reason).inc(count)
        if self._logged.first("job", job, reason):
            log.warning("%d labelled samples of job %s wait: %s", count, job, message)
        return 0

    def _deliver_job(self, job: str, samples: list[StoredSample]) -> int:
        ns, _, name = job.partition("/")
        try:
            model = read(self.store, LifelongLearningJob, ns, name)
        except Refused as exc:
            return self._waits(job, "job_invalid", f"the job is not valid: {exc}", len(samples))
        if model is None:
            return self._waits(job, "job_missing", "the job does not exist", len(samples))
        ds_name = model.spec.dataset.name
        try:
            dataset = read(self.store, Dataset, ns, ds_name)
        except Refused as exc:
            return self._waits(
                job, "dataset_invalid", f"its Dataset {ds_name} is not valid: {exc}", len(samples)
            )
        if dataset is None:
            return self._waits(job, "dataset_missing", f"its Dataset {ds_name} does not exist", len(samples))
        self._logged.forget("job", job)
        node = dataset.spec.node_name
        column = label_column(model, dataset)
        sent = 0
        for chunk in batches([_item(s) for s in samples], self.batch_bytes):
            obj = self._object(ns, name, ds_name, column, chunk)
            meta = obj["metadata"]
            self.downstream.want((KIND, ns, meta["name"]), [node], obj)
            self.metrics.kb_batches.labels(event="sent").inc()
            log.info(
                "job %s: %d labelled samples sent to node %s as %s %s/%s",
                job,
                len(chunk),
                node,
                KIND,
                ns,
                meta["name"],
            )
            sent += 1
        if sent and self.status is not None:
            self.status.request(ns, name)
        return sent

    def _object(
        self, ns: str, job: str, dataset: str, column: str | None, items: list[dict[str, Any]]
    ) -> dict[str, Any]:
        name = batch_name(dataset, [str(i["id"]) for i in items])
        spec: dict[str, Any] = {"job": job, "dataset": dataset, "samples": items}
        if column is not None:
            spec["labelColumn"] = column
        obj = {
            "apiVersion": LABELLED_API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": ns, "resourceVersion": self.next_rv()},
            "spec": spec,
        }
        LabelledSamples.model_validate(obj)  # what the LC will check; a ValueError skips the job
        return obj


class LabelledSamplesController:
    kind = KIND

    def __init__(
        self,
        state: GMState,
        downstream: Sender,
        kb: KnowledgeBase | None,
        metrics: GMMetrics,
        *,
        delivery: LabelledDelivery | None = None,
        status: KBStatusKeeper | None = None,
    ) -> None:
        self.state = state
        self.downstream = downstream
        self.kb = kb
        self.metrics = metrics
        self.delivery = delivery
        self.status = status

    def on_event(self, event: WatchEvent) -> None:
        """No object of this kind is stored (the delivery bookkeeping holds the batches)."""

    def parse_report(self, body: Any) -> LabelledSamplesReport:
        return LabelledSamplesReport.parse(body)

    def report_key(self, env: Envelope, report: LabelledSamplesReport) -> Key:
        return (KIND, env.ns, env.name)

    def apply_report(self, node: str, env: Envelope, report: LabelledSamplesReport) -> Outcome:
        if self.delivery is None:
            return self._apply(node, env, report)
        with self.delivery.lock:
            return self._apply(node, env, report)

    def _apply(self, node: str, env: Envelope, report: LabelledSamplesReport) -> Outcome:
        key = (KIND, env.ns, env.name)
        rows = self.state.down_rows(key=key)
        row = next((r for r in rows if r.node == node), None)
        if row is None:
            if rows:
                raise ReportRejected("wrong_node", f"batch {env.ns}/{env.name} was not sent to node {node}")
            raise ReportRejected("unknown_resource", f"this GM sent no batch {env.ns}/{env.name}")
        if row.op != "upsert" or not isinstance(row.object, dict):
            return Outcome.DUPLICATE  # removed already: a report of an earlier copy
        spec = row.object.get("spec") or {}
        job = str(spec.get("job"))
        ids = [str(s.get("id")) for s in spec.get("samples") or () if isinstance(s, dict)]
        if self.kb is None:
            raise ReportDeferred("kb_off", NO_KB)
        try:
            self.kb.mark_delivered(kb_job(env.ns, job), ids)
        except KBUnavailable as exc:
            self.metrics.kb_failures.labels(op="mark_delivered").inc()
            raise ReportDeferred("kb_unavailable", f"the knowledge base cannot be reached: {exc}") from None
        rv = self.delivery.next_rv() if self.delivery is not None else str(int(time.time() * 1000))
        if rv.isdecimal() and row.rv.isdecimal() and int(rv) <= int(row.rv):
            rv = str(int(row.rv) + 1)
        self.downstream.gone(key, rv)
        self.metrics.kb_batches.labels(event="delivered").inc()
        log.info(
            "node %s appended batch %s/%s of job %s/%s: %d new rows, %d already there",
            node,
            env.ns,
            env.name,
            env.ns,
            job,
            report.appended,
            report.duplicates,
        )
        if self.status is not None:
            self.status.request(env.ns, job)
        return Outcome.APPLIED
