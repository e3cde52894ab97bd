"""The interface of a worker runtime: how the GM starts and stops a stage's worker.

Standalone (``edge_process.py``): the worker becomes a ``Worker`` object in the store, sent
down to the LC named by the template's ``spec.nodeName``; the LC runs it as a local process and
reports its phase upstream. Kubernetes (``kubernetes_pods.py``): a Pod built from the
template, as upstream Sedna does; its phase comes from a Pod watch.

Either way the runtime calls ``on_phase`` with a ``WorkerPhase``, and the lifelong-learning
controller moves the job's stage with it (Starting -> Running -> Completed | Failed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from lifelong.common.api import template_node_name
from lifelong.common.stages import Stage

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]


def worker_name(job_name: str, stage: Stage, round_: int, attempt: int = 1) -> str:
    """``{job}-{stage}-{round}`` for a stage's first attempt, ``...-retry{attempt - 1}`` for a retry
    of a failed one (``lifelong.common.statemachine.attempt``): unique per attempt."""
    base = f"{job_name}-{stage.value.lower()}-{round_}"
    return base if attempt <= 1 else f"{base}-retry{attempt - 1}"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything needed to start one stage's worker of one job."""

    job_namespace: str
    job_name: str
    job_uid: str
    stage: Stage
    round: int
    template: dict[str, Any]  # the job model's pod template of the stage, exactly as the user gave it
    env: dict[str, str]  # the Sedna worker environment variables for this stage
    attempt: int = 1  # 2 and up: a retry of a failed attempt, on the same data

    @property
    def name(self) -> str:
        """``{job}-{stage}-{round}`` (``-retry{n}`` for a retry): unique per job, stage, round and
        attempt; idempotent to create."""
        return worker_name(self.job_name, self.stage, self.round, self.attempt)

    @property
    def node_name(self) -> str | None:
        """The node the template names (``spec.nodeName``), None if unset."""
        return template_node_name(self.template)


@dataclass(frozen=True, slots=True)
class WorkerPhase:
    """A worker's phase as a runtime observed it."""

    job_namespace: str
    job_name: str
    stage: Stage
    round: int
    worker: str
    phase: Phase
    exit_code: int | None = None
    message: str = ""
    output: dict[str, Any] = field(default_factory=dict)


class WorkerRuntime(Protocol):
    def ensure_worker(self, spec: WorkerSpec) -> None:
        """Start the worker unless it already exists (idempotent by ``spec.name``)."""

    def delete_workers(self, job_namespace: str, job_name: str) -> None:
        """Stop and remove every worker of the job."""

    def set_phase_handler(self, on_phase: Callable[[WorkerPhase], None]) -> None:
        """Where observed phases go (the lifelong-learning controller)."""
