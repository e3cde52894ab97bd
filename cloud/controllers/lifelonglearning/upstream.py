"""What an edge reported about a LifelongLearningJob, turned into state-machine events. Pure.

Who calls it: the lifelong-learning controller, for the models of ``report`` bodies on
``up/LifelongLearningJob/{ns}/{name}`` (``JobReady``, ``JobSkipped``; parsed at the door by
``cloud/intake.py`` with ``lifelong.common.messages``) and for worker phases (``WorkerReport``
on ``up/Worker/...`` in standalone mode, Pod phases on Kubernetes).

Reports name the round they belong to; one from an earlier round than the job's current one
is stale (a resend that lost its race) and changes nothing, whatever its stage.
"""

from __future__ import annotations

import json

from lifelong.cloud.runtimes.base import WorkerPhase
from lifelong.common.messages import JobReady, JobSkipped, WorkerReport
from lifelong.common.statemachine import (
    EdgeReady,
    Event,
    StageSkipped,
    WorkerFailed,
    WorkerRunning,
    WorkerSucceeded,
)


def job_event(report: JobReady | JobSkipped) -> Event:
    """The state-machine event of a ``ready`` or ``skipped`` report."""
    data = json.dumps(report.data, separators=(",", ":"), sort_keys=True) if report.data else ""
    message = report.message or ""
    if isinstance(report, JobReady):
        return EdgeReady(report.stage, data=data, message=message)
    return StageSkipped(report.stage, message=message, data=data)


def worker_phase(namespace: str, name: str, report: WorkerReport) -> WorkerPhase:
    """A ``Worker`` report as the ``WorkerPhase`` of worker ``namespace/name``."""
    return WorkerPhase(
        job_namespace=namespace,
        job_name=report.job,
        stage=report.stage,
        round=report.round,
        worker=name,
        phase=report.phase,
        exit_code=report.exit_code,
        message=report.message,
        output=dict(report.output),
    )


def phase_event(phase: WorkerPhase) -> Event | None:
    """The state-machine event of a worker phase (None for ``Pending``: nothing to record)."""
    if phase.phase == "Running":
        return WorkerRunning(phase.stage, message=phase.message)
    if phase.phase == "Succeeded":
        data = json.dumps(phase.output, separators=(",", ":"), sort_keys=True) if phase.output else ""
        return WorkerSucceeded(phase.stage, data=data, message=phase.message)
    if phase.phase == "Failed":
        detail = f"exit code {phase.exit_code}" if phase.exit_code is not None else "failed"
        message = f"worker {phase.worker}: {detail}" + (f": {phase.message}" if phase.message else "")
        return WorkerFailed(phase.stage, message=message)
    return None
