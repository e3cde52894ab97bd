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
from typing import Any

from lifelong.cloud.runtimes.base import WorkerPhase, WorkerSpec
from lifelong.cloud.stores.base import ResourceStore

log = logging.getLogger(__name__)

KIND = "Worker"
API_VERSION = "lifelong.io/v1"
LABEL_JOB = "lifelong.io/job"
LABEL_STAGE = "lifelong.io/stage"
LABEL_ROUND = "lifelong.io/round"


def worker_object(spec: WorkerSpec) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
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
    }


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
        log.info("worker %s/%s: sending it to node %s", spec.job_namespace, spec.name, spec.node_name)
        self.store.apply(worker_object(spec))

    def delete_workers(self, job_namespace: str, job_name: str) -> None:
        for worker in self.store.list(KIND, job_namespace):
            if (worker.get("spec") or {}).get("job") == job_name:
                self.store.delete(KIND, job_namespace, worker["metadata"]["name"])

    def set_phase_handler(self, on_phase: Callable[[WorkerPhase], None]) -> None:
        self._on_phase = on_phase

    def report(self, phase: WorkerPhase) -> object:
        """A phase the LC reported; passed on to the handler."""
        if self._on_phase is None:
            raise RuntimeError("no phase handler set")
        return self._on_phase(phase)
