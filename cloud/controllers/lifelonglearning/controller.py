"""The LifelongLearningJob controller: drives a job through its stages and tells its nodes.

Who calls it: the service, on the job's work-queue key, for every store event of a job
(``on_event``) and every report about it (``apply_report``, ``apply_worker_phase``).

On every event it reconciles the job, level-triggered:

1. settle the history (``Created``: none -> Train/Waiting; a trailing Completed/Failed gets its
   follow-up);
2. on ``Ready``: once any ``retryAfter`` has passed, append ``Starting`` (with the version read,
   so two deciders cannot both start), then ask the runtime for the worker. ``Starting`` and
   ``Running`` re-ensure the worker (idempotent by name), so a crash between the two steps heals.
   A ``Ready`` that retries a failed attempt (``lifelong.common.statemachine``: same data, reason
   ``Retry``) waits for its ``retryAfter``: the job's key is requeued on the keyed executor for
   that moment (``call_later``), and again after a GM restart, whose first reconcile of the job
   finds the same ``Ready``. The retried worker is a new one, ``{job}-{stage}-{round}-retry{n}``;
   a phase reported by the failed attempt's worker after that is stale and changes nothing;
3. send the job to every node that needs it (``LifelongLearningJob.node_names``).

With a ``validate`` hook (Kubernetes mode: the Dataset must exist and every node named must be
a Node object), step 0 checks the job first. A job that fails gets one ``Failed`` condition
with the hook's reason and message, and its ``data`` records the spec's ``metadata.generation``
(``{"rejectedGeneration": N}``). While that condition is the last one and the generation is
unchanged the job is *parked*: not validated again, not settled, not started, only sent to its
nodes as it is; resyncs and its own status events append nothing, and reports and worker
phases about it are rejected (reason ``state``) rather than moving it on. Changing the spec (a new
generation) validates it again: valid, the history is settled as after any failure (Train
Waiting, with the failure backoff); still invalid, one new ``Failed`` for the new generation.
A generation found valid is remembered (in memory) and not checked again, so status changes
cost no extra API calls; a GM restart checks each job once more.

A stored job the API models refuse (the store's watch parses every object once; on Kubernetes
someone may write a custom object the CRD accepts but the models do not) is parked the same way:
one ``Failed`` condition with reason ``Invalid`` and the models' message naming the field, for
its generation; it is not driven or sent until its spec changes. The other jobs go on.

Inside, the controller works on the models (``LifelongLearningJob``, ``Dataset``) and their
derived facts (``history``, ``round``, ``node_names``); the wire form is read only where the store
hands it over (``lifelong.cloud.stores.base``) and written where it is stored or sent.

Reports become state-machine events (``upstream.py``); the machine decides applied / duplicate /
illegal, and every status write is a compare-and-swap on the resourceVersion, retried on
``Conflict``. A resent report never appends a second condition.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lifelong.cloud.controllers.base import Key, Outcome, ReportRejected, Sender
from lifelong.cloud.controllers.lifelonglearning import upstream as llup
from lifelong.cloud.controllers.lifelonglearning.workerenv import (
    DEFAULT_KB_SERVER,
    DEFAULT_LC_SERVER,
    worker_env,
)
from lifelong.cloud.gmstate import GMState
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.runtimes.base import WorkerPhase, WorkerRuntime, WorkerSpec, worker_name
from lifelong.cloud.stores.base import (
    Conflict,
    ModelCache,
    NotFound,
    Object,
    Refused,
    ResourceStore,
    StoreError,
    WatchEvent,
    wire,
)
from lifelong.cloud.workqueue import KeyedExecutor
from lifelong.common.api import Dataset, LifelongLearningJob, parse_keeping_spec
from lifelong.common.envelope import Envelope
from lifelong.common.errors import StateError, ValidationError
from lifelong.common.logonce import LogOnce
from lifelong.common.messages import JobReport, JobWorkerInfo, parse_job_report
from lifelong.common.stages import ConditionType, Stage
from lifelong.common.statemachine import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    DEFAULT_RETRY_LIMIT,
    Condition,
    Created,
    Event,
    WorkerFailed,
    WorkerStarting,
    attempt,
    current,
    current_round,
    format_time,
    retry_after,
    transition,
)

log = logging.getLogger(__name__)

KIND = "LifelongLearningJob"
CAS_RETRIES = 8
REJECTED_GENERATION = "rejectedGeneration"
"""Key in the ``data`` of a validation ``Failed`` condition: the spec generation it judged."""

_UNSET = object()

REASON_INVALID = "Invalid"
"""Reason of the ``Failed`` condition of a stored job the API models refuse."""

Validator = Callable[[LifelongLearningJob], Condition | None]
"""A job -> a ``Failed`` condition saying why it cannot run, or None."""


def _judged_generation(data: str | None) -> object:
    """The spec generation a validation ``Failed`` condition's ``data`` names (``_UNSET``: none)."""
    try:
        value = json.loads(data) if data else None
    except ValueError:
        return _UNSET
    return value.get(REJECTED_GENERATION, _UNSET) if isinstance(value, dict) else _UNSET


def _parked(generation: object, conds: list[Condition]) -> bool:
    last = conds[-1] if conds else None
    if last is None or last.type is not ConditionType.FAILED:
        return False
    judged = _judged_generation(last.data)
    return judged is not _UNSET and judged == generation


class LifelongLearningController:
    kind = KIND
    bursts = True
    """``apply_report`` writes only the store and the GM's bookkeeping: the intake may apply a
    burst of reports in one transaction (``cloud/intake.py``)."""

    def __init__(
        self,
        store: ResourceStore,
        downstream: Sender,
        runtime: WorkerRuntime,
        *,
        executor: KeyedExecutor,
        state: GMState,
        metrics: GMMetrics,
        lc_server: str = DEFAULT_LC_SERVER,
        kb_server: str = DEFAULT_KB_SERVER,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_cap: float = DEFAULT_BACKOFF_CAP,
        retry_limit: int = DEFAULT_RETRY_LIMIT,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        validate: Validator | None = None,
        models: ModelCache | None = None,
    ) -> None:
        self.store = store
        self.validate = validate
        self._valid_generation: dict[Key, object] = {}  # job -> the spec generation found valid
        self.downstream = downstream
        self.runtime = runtime
        self.executor = executor
        self.state = state
        self._models = models if models is not None else ModelCache()
        """Each version of a job or Dataset parsed once (for reports, reconciles, the watch)."""
        self._reconciled: dict[Key, str] = {}
        """Job -> the version its last reconcile ran to the end on (see ``on_event``)."""
        self._bad_datasets = LogOnce()
        self.metrics = metrics
        self.lc_server = lc_server
        self.kb_server = kb_server
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.retry_limit = retry_limit
        self.clock = clock
        self._datasets: dict[Key, str] = {}  # job -> the Dataset it names (from its events)
        self._jobs_of: dict[tuple[str, str], set[Key]] = {}  # (ns, dataset) -> those jobs
        self._datasets_lock = threading.Lock()
        self.on_train_completed: Callable[[str, str], None] | None = None
        """Called with (namespace, name) when a Train stage of the job completed (the service
        refreshes its ``status.knowledgeBase``: the worker posted its task index to the KB)."""

    @property
    def _backoff(self) -> dict[str, Any]:
        """The failure policy every ``transition`` gets: backoff and retry limit."""
        return {
            "backoff_base": self.backoff_base,
            "backoff_cap": self.backoff_cap,
            "retry_limit": self.retry_limit,
        }

    # -- store events ----------------------------------------------------------------------
    def on_event(self, event: WatchEvent) -> None:
        """A store event of a job: a delete stops its workers and removes it from its nodes;
        anything else reconciles it (a job the models refuse gets its ``Failed`` condition there)."""
        key = event.key
        started = time.perf_counter()
        self._index(event)
        try:
            if event.type == "DELETED":
                _, ns, name = key
                log.info("job %s/%s deleted; stopping its workers", ns, name)
                self.runtime.delete_workers(ns, name)
                self.downstream.gone(key, event.resource_version)
                self.state.forget_job(ns, name)
                self._valid_generation.pop(key, None)
                self._reconciled.pop(key, None)
            else:
                if isinstance(event.model, LifelongLearningJob):
                    self._models.put(key, event.resource_version, event.model)
                if event.resource_version and self._reconciled.get(key) == event.resource_version:
                    # A reconcile already ran to the end on this version: it is the event of that
                    # reconcile's own status write (which read the version it wrote and sent it),
                    # and reconciling it again would decide and send the same. A version names one
                    # content only (a store never reuses one), so nothing is skipped that changed.
                    self.metrics.reconciles_skipped.labels(kind=KIND).inc()
                    return
                self.reconcile(key)
        finally:
            self.metrics.reconcile_seconds.labels(kind=KIND).observe(time.perf_counter() - started)

    def enqueue(self, key: Key) -> None:
        self.executor.submit(key, lambda: self.reconcile(key))

    def _index(self, event: WatchEvent) -> None:
        job = event.model
        ds = job.spec.dataset.name if isinstance(job, LifelongLearningJob) else None
        key = event.key
        with self._datasets_lock:
            old = self._datasets.pop(key, None)
            if old is not None:
                jobs = self._jobs_of.get((key[1], old), set())
                jobs.discard(key)
                if not jobs:
                    self._jobs_of.pop((key[1], old), None)
            if event.type != "DELETED" and ds is not None:
                self._datasets[key] = ds
                self._jobs_of.setdefault((key[1], ds), set()).add(key)

    def jobs_using(self, ns: str, dataset: str) -> list[Key]:
        """The jobs (seen in a store event) that name ``ns/dataset``: no scan of the store. A job
        not seen yet is reconciled by its own event, which reads the dataset as it is then."""
        with self._datasets_lock:
            return sorted(self._jobs_of.get((ns, dataset), ()))

    def reconcile(self, key: Key) -> None:
        _, ns, name = key
        written: LifelongLearningJob | None = None  # what this reconcile wrote last: current
        for _ in range(CAS_RETRIES):
            try:
                # the store's version, parsed once (the watch event that brought it parsed it)
                job = written or self._models.read(self.store, LifelongLearningJob, ns, name)
                written = None
                if job is None:
                    return
            except Refused as exc:
                try:
                    self._refuse(key, exc.reason)
                except Conflict:
                    continue  # someone wrote in between: read again
                return
            conds = job.history
            now = self.clock()
            try:
                if self.validate is not None:
                    try:
                        blocked, job = self._check_spec(job, conds)
                    except Conflict:
                        raise
                    except StoreError as exc:  # the API server is unreachable: check again later
                        log.warning("job %s/%s: cannot validate it now (%s); retrying", ns, name, exc)
                        self.executor.call_later(2.0, key, lambda: self.reconcile(key))
                        return
                    if blocked:
                        self._send(job)
                        return
                settled = transition(conds, Created(), now, **self._backoff)
                if settled:
                    # the version written is the current one (a write that lost to another
                    # raises Conflict): go on with it, not read it again
                    written = self._append_to(job, conds, settled)
                    continue
                cur = current(conds)
                if cur is not None and cur.type is ConditionType.READY:
                    after = retry_after(conds)
                    if after is not None and now < after:
                        delay = (after - now).total_seconds()
                        log.info(
                            "job %s/%s %s Ready: retrying attempt %d at %s (in %.1fs)",
                            ns,
                            name,
                            cur.stage.value,
                            attempt(conds, cur.stage),
                            format_time(after),
                            delay,
                        )
                        self.executor.call_later(delay + 0.05, key, lambda: self.reconcile(key))
                    else:
                        event = WorkerStarting(cur.stage, message="starting the worker")
                        new = transition(conds, event, now, **self._backoff)
                        job = self._append_to(job, conds, new)
                        conds = conds + new
                        cur = current(conds)
                if cur is not None and cur.type in (ConditionType.STARTING, ConditionType.RUNNING):
                    try:
                        self._ensure_worker(job, conds, cur.stage)
                    except (ValueError, ValidationError) as exc:  # can never start: the stage fails
                        log.error("job %s/%s: cannot start the %s worker: %s", ns, name, cur.stage.value, exc)
                        failed = WorkerFailed(cur.stage, reason="StartFailed", message=str(exc))
                        self._append_to(job, conds, transition(conds, failed, now, **self._backoff))
                        continue
                    except (Conflict, StateError):
                        raise
                    except Exception:  # the runtime's API is down: try again later
                        log.exception(
                            "job %s/%s: starting the %s worker failed; retrying", ns, name, cur.stage.value
                        )
                        self.executor.call_later(2.0, key, lambda: self.reconcile(key))
            except Conflict:
                continue  # someone wrote in between: read again
            except StateError as exc:
                log.warning("job %s/%s: %s; reading it again", ns, name, exc)
                continue
            self._send(job)
            return
        log.warning("job %s/%s: gave up after %d conflicting writes; will retry", ns, name, CAS_RETRIES)
        self.executor.call_later(1.0, key, lambda: self.reconcile(key))

    def _check_spec(
        self, job: LifelongLearningJob, conds: list[Condition]
    ) -> tuple[bool, LifelongLearningJob]:
        """(parked, job): whether the job must not be driven, and the job after any write.

        See the module docstring. Raises ``Conflict`` when the job changed under the write.
        """
        assert self.validate is not None
        generation = job.metadata.generation
        key = job.key
        if generation is not None and self._valid_generation.get(key) == generation:
            return False, job
        if _parked(generation, conds):
            return True, job
        problem = self.validate(job)
        if problem is None:
            if generation is not None:
                self._valid_generation[key] = generation
            return False, job
        failed = dataclasses.replace(problem, data=json.dumps({REJECTED_GENERATION: generation}))
        log.warning(
            "job %s/%s (generation %s) cannot run: %s: %s",
            job.namespace,
            job.name,
            generation,
            failed.reason,
            failed.message,
        )
        return True, self._append_to(job, conds, [failed])

    def _refuse(self, key: Key, reason: str) -> None:
        """Record that the stored job ``key`` is refused by the models: one ``Failed`` condition
        (reason ``Invalid``, the models' message) for its spec generation, which parks it like a
        validation failure until the spec changes. Raises ``Conflict`` if it changed meanwhile.

        The one place the reconcile reads a job's wire form, since there is no model of it: only
        ``metadata`` and ``status.conditions`` are read, and the conditions are kept as stored.
        """
        _, ns, name = key
        raw = self.store.get(KIND, ns, name)
        if raw is None:
            return
        meta: dict[str, Any] = raw["metadata"] if isinstance(raw.get("metadata"), dict) else {}
        status: dict[str, Any] = dict(raw["status"]) if isinstance(raw.get("status"), dict) else {}
        items: list[Any] = status["conditions"] if isinstance(status.get("conditions"), list) else []
        last = items[-1] if items and isinstance(items[-1], dict) else {}
        generation = meta.get("generation")
        judged = _judged_generation(last.get("data") if isinstance(last.get("data"), str) else None)
        if last.get("type") == ConditionType.FAILED.value and judged is not _UNSET and judged == generation:
            return  # already recorded for this generation
        stage = last.get("stage")
        stamp = format_time(self.clock())
        failed = Condition(
            type=ConditionType.FAILED,
            stage=Stage(stage) if stage in {s.value for s in Stage} else Stage.TRAIN,
            reason=REASON_INVALID,
            message=f"the stored job is not valid: {reason}",
            data=json.dumps({REJECTED_GENERATION: generation}),
            last_transition_time=stamp,
            last_heartbeat_time=stamp,
        )
        log.error("job %s/%s (generation %s) is not valid, not driving it: %s", ns, name, generation, reason)
        status["conditions"] = [*items, failed.to_dict()]
        self.store.update_status(KIND, ns, name, status, resource_version=str(meta.get("resourceVersion")))

    def _write_conditions(
        self, key: Key, rv: object, status: dict[str, Any], conds: list[Condition], new: list[Condition]
    ) -> Object:
        _, ns, name = key
        status["conditions"] = [c.to_dict() for c in conds + new]
        status.setdefault("startTime", format_time(self.clock()))
        for cond in new:
            log.info(
                "job %s/%s stage=%s -> %s%s",
                ns,
                name,
                cond.stage.value,
                cond.type.value,
                f" ({cond.message})" if cond.message else "",
            )
        return self.store.update_status(KIND, ns, name, status, resource_version=str(rv))

    def _append_to(
        self, job: LifelongLearningJob, conds: list[Condition], new: list[Condition]
    ) -> LifelongLearningJob:
        """Append ``new`` to the job (compare-and-swap on its version); the job as written."""
        status = wire(job.status) if job.status is not None else {}
        obj = self._write_conditions(job.key, job.metadata.resource_version, status, conds, new)
        try:
            written = parse_keeping_spec(job, obj)  # the spec is unchanged: not parsed again
        except ValidationError as exc:
            raise Refused(job.key, exc) from None
        # the reconcile reads the job again next (and the watch's event of this write brings it):
        # that version is parsed already
        self._models.put(written.key, written.metadata.resource_version or "", written)
        return written

    def _dataset_of(self, job: LifelongLearningJob) -> Dataset | None:
        """The job's Dataset, None if it does not exist or the models refuse it (the watch counts
        that, and the job then involves only its workers' nodes)."""
        try:
            return self._models.read(self.store, Dataset, job.namespace, job.spec.dataset.name)
        except Refused as exc:
            if self._bad_datasets.first("dataset", job.key, str(exc)):  # every report asks: once
                log.warning("job %s/%s: its dataset is not valid: %s", job.namespace, job.name, exc)
            return None

    def _ensure_worker(self, job: LifelongLearningJob, conds: list[Condition], stage: Stage) -> None:
        round_ = current_round(conds)
        env = worker_env(
            job,
            stage,
            round_,
            conds,
            self._dataset_of(job),
            lc_server=self.lc_server,
            kb_server=self.kb_server,
        )
        spec = WorkerSpec(
            job_namespace=job.namespace,
            job_name=job.name,
            job_uid=job.metadata.uid or "",
            stage=stage,
            round=round_,
            template=copy.deepcopy(job.spec.template_for(stage)),
            env=env,
            attempt=attempt(conds, stage),
        )
        env["WORKER_NAME"] = spec.name  # a retry's worker has a name of its own
        self.runtime.ensure_worker(spec)

    def _send(self, job: LifelongLearningJob) -> None:
        """Send ``job`` to its nodes: the last step of a reconcile, which is then done with that
        version of the job. Once the sending has run (after the commit of a burst of reconciles;
        never if it rolled back, when the executor runs the reconcile again) that version's own
        event need not be reconciled again (``on_event``)."""
        key, rv = job.key, job.metadata.resource_version
        done = None if not rv else functools.partial(self._reconciled.__setitem__, key, rv)
        self.downstream.want(
            key, job.node_names(self._dataset_of(job)), wire(job), include_status=True, then=done
        )

    # -- upstream --------------------------------------------------------------------------
    def parse_report(self, body: Any) -> JobReport:
        return parse_job_report(body)

    def report_key(self, env: Envelope, report: JobReport) -> Key:
        return (KIND, env.ns, env.name)

    def _read_job(self, ns: str, name: str) -> LifelongLearningJob:
        """The job a report is about, as its model. ``ReportRejected`` when it does not exist, or
        when the models refuse it (its watch event has already recorded that as ``Failed``)."""
        try:
            job = self._models.read(self.store, LifelongLearningJob, ns, name)
        except Refused as exc:
            raise ReportRejected("state", f"job {ns}/{name} is not valid: {exc}") from None
        if job is None:
            raise ReportRejected("unknown_resource", f"job {ns}/{name} does not exist")
        return job

    def apply_report(self, node: str, env: Envelope, report: JobReport) -> Outcome:
        job = self._read_job(env.ns, env.name)
        # A worker's node is known from the job alone; the Dataset is read only for a node that
        # runs no worker (it may hold the data), which spares a store read on nearly every report.
        if node not in job.spec.node_names(None) and node not in job.node_names(self._dataset_of(job)):
            raise ReportRejected("wrong_node", f"node {node} takes no part in job {env.ns}/{env.name}")
        if isinstance(report, JobWorkerInfo):
            changed = self.state.put_worker_info(env.ns, env.name, report.worker, report.info)
            return Outcome.APPLIED if changed else Outcome.DUPLICATE
        return self._apply_event(
            env.ns, env.name, llup.job_event(report), report.round, from_node=node, job=job
        )

    def apply_worker_phase(self, phase: WorkerPhase) -> Outcome:
        """A worker's phase (from the edge-process or the Pod runtime) moves the job's stage."""
        event = llup.phase_event(phase)
        if event is None:
            return Outcome.DUPLICATE
        return self._apply_event(
            phase.job_namespace,
            phase.job_name,
            event,
            phase.round,
            from_node=phase.worker,
            worker=phase.worker,
        )

    def _apply_event(
        self,
        ns: str,
        name: str,
        event: Event,
        round_: int,
        *,
        from_node: str,
        job: LifelongLearningJob | None = None,
        worker: str | None = None,
    ) -> Outcome:
        """Apply ``event`` to the job (``job``: as the caller has just read it, so the first try
        does not read it again; a conflicting write makes every later try read it anew).
        ``worker``: the event is that worker's phase; a phase of another attempt's worker of the
        same stage and round (the failed one a retry replaced) is stale."""
        for _ in range(CAS_RETRIES):
            if job is None:
                job = self._read_job(ns, name)
            conds = job.history
            if _parked(job.metadata.generation, conds):  # a report sent before the spec became invalid
                raise ReportRejected("state", f"job {ns}/{name} failed validation; its spec must change")
            if round_ < current_round(conds):
                log.info(
                    "job %s/%s: stale report from %s for round %d (now %d)",
                    ns,
                    name,
                    from_node,
                    round_,
                    current_round(conds),
                )
                return Outcome.DUPLICATE
            if worker is not None and self._other_attempt(name, conds, event, round_, worker):
                log.info("job %s/%s: stale phase of worker %s, an earlier attempt", ns, name, worker)
                return Outcome.DUPLICATE
            try:
                new = transition(conds, event, self.clock(), **self._backoff)
            except StateError as exc:
                raise ReportRejected("state", f"job {ns}/{name}: {exc}") from None
            if not new:
                return Outcome.DUPLICATE
            try:
                self._append_to(job, conds, new)
            except Conflict:
                job = None
                continue
            except NotFound:
                raise ReportRejected("unknown_resource", f"job {ns}/{name} does not exist") from None
            if self.on_train_completed is not None and any(
                c.stage is Stage.TRAIN and c.type is ConditionType.COMPLETED for c in new
            ):
                self.on_train_completed(ns, name)
            return Outcome.APPLIED
        raise Conflict(f"job {ns}/{name}: too many conflicting writes")

    @staticmethod
    def _other_attempt(name: str, conds: list[Condition], event: Event, round_: int, worker: str) -> bool:
        """Whether ``worker``, whose phase ``event`` is, ran another attempt of the current stage and
        round than the one under way (a late report of a failed attempt that is being retried)."""
        cur = current(conds)
        stage = None if isinstance(event, Created) else event.stage
        if cur is None or stage is not cur.stage or round_ != current_round(conds):
            return False
        return worker != worker_name(name, cur.stage, round_, attempt(conds, cur.stage))
