"""What an edge reported about a LifelongLearningJob, turned into state-machine events. Pure.

Who calls it: the lifelong-learning controller, for ``report`` bodies on
``up/LifelongLearningJob/{ns}/{name}`` and for worker phases (``up/Worker/...`` in standalone
mode, Pod phases on Kubernetes). Malformed bodies raise ``ReportRejected`` naming the field.

Reports name the round they belong to; one from an earlier round than the job's current one
is stale (a resend that lost its race) and changes nothing, whatever its stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lifelong.cloud.controllers.base import ReportRejected
from lifelong.cloud.runtimes.base import WorkerPhase
from lifelong.common.stages import Stage
from lifelong.common.statemachine import (
    EdgeReady,
    Event,
    StageSkipped,
    WorkerFailed,
    WorkerRunning,
    WorkerSucceeded,
)

JOB_EVENTS = ("ready", "workerInfo", "skipped")


@dataclass(frozen=True, slots=True)
class JobReport:
    """A parsed ``LifelongLearningJob`` report."""

    event: str
    stage: Stage
    round: int
    data: dict[str, Any]
    worker: str = ""
    info: Any = None
    message: str = ""


def _stage(body: dict[str, Any]) -> Stage:
    try:
        return Stage(str(body.get("stage")))
    except ValueError:
        raise ReportRejected(
            "schema", f"body.stage must be Train, Eval or Deploy, not {body.get('stage')!r}"
        ) from None


def _round(body: dict[str, Any]) -> int:
    value = body.get("round")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReportRejected("schema", f"body.round must be a non-negative integer, not {value!r}")
    return value


def parse_job_report(body: dict[str, Any] | None) -> JobReport:
    if not isinstance(body, dict):
        raise ReportRejected("schema", "a LifelongLearningJob report needs a body")
    event = body.get("event")
    if event not in JOB_EVENTS:
        raise ReportRejected("schema", f"body.event must be one of {', '.join(JOB_EVENTS)}, not {event!r}")
    if event == "workerInfo":
        worker = body.get("worker")
        if not isinstance(worker, str) or not worker:
            raise ReportRejected("schema", "body.worker must name the worker")
        # no stage or round: the LC forwards what a worker posted, whenever it posts
        return JobReport(str(event), Stage.TRAIN, 0, {}, worker, body.get("info"))
    data = body.get("data") or {}
    if not isinstance(data, dict):
        raise ReportRejected("schema", "body.data must be a map")
    message = body.get("message") or ""
    report = JobReport(
        event=str(event),
        stage=_stage(body),
        round=_round(body),
        data=data,
        message=message if isinstance(message, str) else "",
    )
    return report


def job_event(report: JobReport) -> Event:
    """The state-machine event of a ``ready`` or ``skipped`` report."""
    data = json.dumps(report.data, separators=(",", ":"), sort_keys=True) if report.data else ""
    if report.event == "ready":
        return EdgeReady(report.stage, data=data, message=report.message)
    return StageSkipped(report.stage, message=report.message, data=data)


def parse_worker_report(namespace: str, name: str, body: dict[str, Any] | None) -> WorkerPhase:
    """A ``Worker`` report body as a ``WorkerPhase``."""
    if not isinstance(body, dict):
        raise ReportRejected("schema", "a Worker report needs a body")
    job = body.get("job")
    if not isinstance(job, str) or not job:
        raise ReportRejected("schema", "body.job must name the job")
    phase = body.get("phase")
    if phase not in ("Pending", "Running", "Succeeded", "Failed"):
        raise ReportRejected(
            "schema", f"body.phase must be Pending, Running, Succeeded or Failed, not {phase!r}"
        )
    exit_code = body.get("exitCode")
    if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)):
        raise ReportRejected("schema", "body.exitCode must be an integer or null")
    output = body.get("output") or {}
    if not isinstance(output, dict):
        raise ReportRejected("schema", "body.output must be a map")
    message = body.get("message") or ""
    return WorkerPhase(
        job_namespace=namespace,
        job_name=job,
        stage=_stage(body),
        round=_round(body),
        worker=name,
        phase=phase,
        exit_code=exit_code,
        message=message if isinstance(message, str) else "",
        output=output,
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
