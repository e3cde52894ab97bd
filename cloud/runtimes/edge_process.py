"""The standalone worker runtime: a stage's worker is a ``Worker`` object in the store.

Who uses it: the lifelong-learning controller (``ensure_worker`` on Ready/Starting,
``delete_workers`` when a job is deleted). The Worker controller (``cloud/controllers/worker``)
sends each Worker down to the node named by its template's ``spec.nodeName``, where the LC runs
the first container's ``command``/``args``/``env`` as a local process and reports its phase;
those phases reach the lifelong-learning controller through ``set_phase_handler``.

Object shape (docs/protocol.md): ``{"apiVersion": "lifelong.io/v1", "kind": "Worker",
"metadata": {name, namespace, labels}, "spec": {"job", "stage", "round", "template", "env"}}``,
named ``{job}-{stage lowercased}-{round}``. Level-triggered like everything else: a node that was
offline gets its Worker objects through the hello diff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lifelong.cloud.runtimes.base import WorkerPhase, WorkerSpec
from lifelong.cloud.stores.base import Refused, ResourceStore, parse, wire
from lifelong.common.api import WORKER_API_VERSION, Worker, parse_stored

log = logging.getLogger(__name__)

KIND = "Worker"
API_VERSION = WORKER_API_VERSION
LABEL_JOB = "lifelong.io/job"
LABEL_STAGE = "lifelong.io/stage"
LABEL_ROUND = "lifelong.io/round"


def worker_object(spec: WorkerSpec) -> Worker:
    """The ``Worker`` model of one stage's worker (``ValidationError`` if the models refuse it)."""
    worker = parse_stored(
        {
            "apiVersion": WORKER_API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": spec.name,
                "namespace": spec.job_namespace,
                "labels": {
                    LABEL_JOB: spec.job_name,
                    LABEL_STAGE: spec.stage.value,
                    LABEL_ROUND: str(spec.round),
                },
            },
            "spec": {
                "job": spec.job_name,
                "stage": spec.stage.value,
                "round": spec.round,
                "template": spec.template,
                "env": dict(spec.env),
            },
        },
        source=f"the {spec.stage.value} worker of {spec.job_namespace}/{spec.job_name}",
    )
    assert isinstance(worker, Worker)  # the kind chose the model
    return worker


def workers_of(store: ResourceStore, job_namespace: str, job_name: str) -> list[Worker]:
    """The Worker objects of one job; one the models refuse is logged with its key and skipped."""
    found = []
    for obj in store.list(KIND, job_namespace):
        try:
            worker = parse(obj)
        except Refused as exc:
            log.warning("skipping a stored Worker the models refuse: %s", exc)
            continue
        if isinstance(worker, Worker) and worker.spec.job == job_name:
            found.append(worker)
    return found


class EdgeProcessRuntime:
    """``WorkerRuntime`` for standalone mode."""

    def __init__(self, store: ResourceStore) -> None:
        self.store = store
        self._on_phase: Callable[[WorkerPhase], object] | None = None

    def ensure_worker(self, spec: WorkerSpec) -> None:
        if spec.node_name is None:
            raise ValueError(
                f"the {spec.stage.value} template of {spec.job_namespace}/{spec.job_name} names no node"
            )
        if self.store.get(KIND, spec.job_namespace, spec.name) is not None:
            return
        worker = worker_object(spec)
        log.info("worker %s/%s: sending it to node %s", spec.job_namespace, spec.name, spec.node_name)
        self.store.apply(wire(worker))

    def delete_workers(self, job_namespace: str, job_name: str) -> None:
        for worker in workers_of(self.store, job_namespace, job_name):
            self.store.delete(KIND, job_namespace, worker.name)

    def set_phase_handler(self, on_phase: Callable[[WorkerPhase], None]) -> None:
        self._on_phase = on_phase

    def report(self, phase: WorkerPhase) -> object:
        """A phase the LC reported; passed on to the handler."""
        if self._on_phase is None:
            raise RuntimeError("no phase handler set")
        return self._on_phase(phase)
