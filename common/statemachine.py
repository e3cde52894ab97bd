"""The LifelongLearningJob state machine, as a pure function over the condition history.

What it is for: a job's ``status.conditions`` is an append-only history; the last condition
drives both sides. Nothing here does I/O, reads the clock or imports the API models, so the
same rules run in the GM, in the LC and in tests.

Who calls it:

* the **GM** controller applies every upstream report (``EdgeReady``, ``Worker*``,
  ``StageSkipped``) and its own decisions (``Created``, ``WorkerStarting``) with
  :func:`transition`, appends what it returns, and maps :class:`Condition` to and from the API's
  camelCase conditions with :meth:`Condition.to_dict` / :meth:`Condition.from_dict`;
* the **LC** decides when a ``Waiting`` stage becomes ``Ready`` (trigger fired, eval/deploy
  inputs found) and reads :func:`current`, :func:`current_round` and :func:`retry_after`.

The machine, for a stage S (Train -> Eval -> Deploy -> Train ...)::

    (no conditions) --Created--> Train/Waiting

    S/Waiting --EdgeReady--> S/Ready --WorkerStarting--> S/Starting --WorkerRunning--> S/Running
       |                        |                           |                             |
       | StageSkipped           | StageSkipped              | WorkerSucceeded             | WorkerSucceeded
       | (Eval, Deploy)         | (Eval, Deploy)            | WorkerFailed                | WorkerFailed
       v                        v                           v                             v

    on WorkerSucceeded / StageSkipped:  S/Completed + next_stage(S)/Waiting  (Deploy -> Train: next round)
    on WorkerFailed:                    S/Failed + Train/Waiting             (data carries retryAfter)

    "A + B": both conditions are returned by the same call, so a history never stops at A.

``transition(history, event, now)`` returns the conditions to **append** (never edits one):

* ``Completed`` is always followed, in the same return, by the next stage's ``Waiting``;
  ``Failed`` by ``Train/Waiting``. A history that nevertheless ends in ``Completed`` or
  ``Failed`` (written by upstream Sedna's GM, which appends them in separate updates) is
  *settled* first: every call prepends the missing follow-up, and ``Created`` returns only it.
* ``WorkerSucceeded`` while still ``Starting`` goes straight to ``Completed`` (no synthetic
  ``Running`` is invented; upstream does the same when it sees a pod already succeeded, and a
  Deploy worker counts as succeeded as soon as it serves the new model).

Three outcomes, kept apart on purpose:

* **applied** - a non-empty list: the event moves the current condition forward.
* **duplicate or stale -> ``[]``** - the event is about the current stage and its type is
  already the current one (a resent report; ``running`` while ``Running``), or it would have been
  applicable at some earlier point of the history: it names a stage whose history holds a
  condition the event starts from or leads to (a late report for a stage the job has left, a
  failure resent after the job went back to ``Train/Waiting``). At-least-once delivery makes
  these normal, so the GM acks them and changes nothing; a resent report never appends a second
  condition. Duplicates are recognised by (stage, type), not by ``data``: the first report wins.
* **illegal -> :class:`~lifelong.common.errors.StateError`** - the event was never applicable
  in this history (a worker report for a stage that was never started, ``EdgeReady`` for a stage
  never reached), ``StageSkipped`` for Train, and any ``WorkerStarting`` that is not from the
  current ``Ready`` (or a repeat while ``Starting``) or that comes before ``retryAfter``. The
  GM decides ``WorkerStarting`` from the condition it has just read, so a mismatch means it acted
  on a stale read: it must re-read, not start a worker. The GM counts and acks illegal reports;
  retrying them cannot help.

Failures and backoff: ``Failed`` and ``Train/Waiting`` are appended together, immediately, so a
crash can never leave a job parked on ``Failed``. The ``Waiting`` condition's ``data`` is JSON
``{"retryAfter": "<RFC 3339>", "consecutiveFailures": n}``; ``retryAfter`` is the failure time
plus ``backoff_seconds(n)`` (10 s doubling, capped at 360 s, like Kubernetes' job backoff).
The LC may fire its trigger during the backoff (its report is not lost); the GM delays
``WorkerStarting`` until :func:`retry_after`, and this module refuses an earlier start.
``n`` counts the ``Failed`` conditions since the last ``Deploy/Completed`` - the job's last
full round - so a stage that keeps failing backs off further even when the stages before it
succeed.

Rounds: :func:`current_round` is the number of ``Train/Ready`` conditions, i.e. how many times
the training trigger fired (upstream's LC counter ``sedna.io/rounds``, incremented when the
trigger fires; a failed attempt uses up its round). It is derived from the append-only
history, not stored in a field, so conditions keep upstream's exact shape and the LC can
recover its round after a restart from the conditions alone. ``0`` means never triggered.

``Condition.status`` is always ``"True"`` for appended conditions (as upstream) and is not
interpreted. Times are RFC 3339 UTC strings with second precision, as Kubernetes writes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

from lifelong.common.errors import StateError, ValidationError
from lifelong.common.stages import ConditionType, Stage, next_stage

__all__ = [
    "DEFAULT_BACKOFF_BASE",
    "DEFAULT_BACKOFF_CAP",
    "Condition",
    "Created",
    "EdgeReady",
    "Event",
    "StageSkipped",
    "WorkerFailed",
    "WorkerRunning",
    "WorkerStarting",
    "WorkerSucceeded",
    "backoff_seconds",
    "consecutive_failures",
    "current",
    "current_round",
    "format_time",
    "parse_time",
    "retry_after",
    "starts_round",
    "transition",
]

DEFAULT_BACKOFF_BASE = 10.0
"""Seconds before the first retry after a failure (Kubernetes' DefaultJobBackOff)."""
DEFAULT_BACKOFF_CAP = 360.0
"""Longest wait between retries (Kubernetes' MaxJobBackOff)."""

REASON_CREATED = "JobCreated"
REASON_SKIPPED = "Skipped"
REASON_WORKER_FAILED = "WorkerFailed"

_W = ConditionType.WAITING
_R = ConditionType.READY
_S = ConditionType.STARTING
_RUN = ConditionType.RUNNING
_C = ConditionType.COMPLETED
_F = ConditionType.FAILED


# --------------------------------------------------------------------------- time


def parse_time(value: datetime | str) -> datetime:
    """An aware UTC datetime from a datetime or an RFC 3339 / ISO 8601 string.

    Raises ``ValueError`` for a malformed string or a naive datetime (no silent local time).
    """
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an RFC 3339 time: {value!r}") from None
    else:
        dt = value
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"time must carry a timezone: {value!r}")
    return dt.astimezone(UTC)


def format_time(value: datetime | str) -> str:
    """RFC 3339 UTC with second precision, as Kubernetes' ``metav1.Time``: ``2024-05-01T12:00:00Z``."""
    return parse_time(value).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- conditions


@dataclass(frozen=True, slots=True)
class Condition:
    """One entry of ``status.conditions``, field for field as upstream's ``LLJobCondition``.

    ``data`` is upstream's JSON string (input/output models, data URLs, or our ``retryAfter``);
    it may be empty. Build one from the API's camelCase dict with :meth:`from_dict`.
    """

    type: ConditionType
    stage: Stage
    status: str = "True"
    reason: str = ""
    message: str = ""
    data: str = ""
    last_transition_time: str | None = None
    last_heartbeat_time: str | None = None

    def __post_init__(self) -> None:
        # Accept the plain strings "Train"/"Waiting" but always store the enums.
        object.__setattr__(self, "type", ConditionType(self.type))
        object.__setattr__(self, "stage", Stage(self.stage))

    def to_dict(self) -> dict[str, str]:
        """The camelCase form of the API. Empty or unset optional fields are left out
        (``omitempty`` upstream); ``type``, ``status`` and ``stage`` are always present."""
        out: dict[str, str] = {"type": self.type.value, "status": self.status, "stage": self.stage.value}
        optional = (
            ("lastHeartbeatTime", self.last_heartbeat_time),
            ("lastTransitionTime", self.last_transition_time),
            ("reason", self.reason),
            ("message", self.message),
            ("data", self.data),
        )
        out.update((key, value) for key, value in optional if value)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Condition:
        """Read the camelCase form; unknown keys are ignored. A missing or unknown ``type`` or
        ``stage``, or a non-string field, raises ``ValidationError`` naming the field."""
        errors: list[tuple[str, str]] = []

        def text(key: str, default: str | None) -> str | None:
            value = raw.get(key, default)
            if value is None or isinstance(value, str):
                return value
            errors.append((key, f"must be a string, not {type(value).__name__}"))
            return default

        type_ = text("type", None)
        stage = text("stage", None)
        if type_ not in {t.value for t in ConditionType}:
            errors.append(("type", f"must be one of {', '.join(t.value for t in ConditionType)}"))
        if stage not in {s.value for s in Stage}:
            errors.append(("stage", f"must be one of {', '.join(s.value for s in Stage)}"))
        status = text("status", "True")
        reason = text("reason", "")
        message = text("message", "")
        data = text("data", "")
        transition_time = text("lastTransitionTime", None)
        heartbeat_time = text("lastHeartbeatTime", None)
        if errors or type_ is None or stage is None:  # the last two imply errors; they narrow types
            raise ValidationError(errors, source="condition")
        return cls(
            type=ConditionType(type_),
            stage=Stage(stage),
            status=status or "True",
            reason=reason or "",
            message=message or "",
            data=data or "",
            last_transition_time=transition_time,
            last_heartbeat_time=heartbeat_time,
        )


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Created:
    """The GM saw the job (new, or after a restart): settle the history. Appends ``Train/Waiting``
    to an empty history, the missing follow-up of a trailing ``Completed``/``Failed``, else nothing."""


@dataclass(frozen=True, slots=True)
class _StageEvent:
    """Base of the events about one stage; ``stage`` may be given by name (``"Train"``)."""

    stage: Stage

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage", Stage(self.stage))


@dataclass(frozen=True, slots=True)
class EdgeReady(_StageEvent):
    """LC: the stage's trigger fired / its inputs were found. ``data`` is the input JSON."""

    data: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class WorkerStarting(_StageEvent):
    """GM: it is starting the stage's worker (record this *before* starting it)."""

    message: str = ""


@dataclass(frozen=True, slots=True)
class WorkerRunning(_StageEvent):
    """LC or pod watch: the stage's worker is running."""

    message: str = ""


@dataclass(frozen=True, slots=True)
class WorkerSucceeded(_StageEvent):
    """The stage's worker finished well (Deploy: serves the new model). ``data`` is the output JSON."""

    data: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class WorkerFailed(_StageEvent):
    """The stage's worker failed, before or after it ran (including: it could not be started)."""

    reason: str = REASON_WORKER_FAILED
    message: str = ""
    data: str = ""


@dataclass(frozen=True, slots=True)
class StageSkipped(_StageEvent):
    """LC: nothing to do in this Eval or Deploy stage (e.g. no model to deploy, as upstream's LC
    reports ``completed`` straight away). Completes the stage without a worker."""

    reason: str = REASON_SKIPPED
    message: str = ""
    data: str = ""


Event: TypeAlias = (
    Created | EdgeReady | WorkerStarting | WorkerRunning | WorkerSucceeded | WorkerFailed | StageSkipped
)
StageEvent: TypeAlias = (
    EdgeReady | WorkerStarting | WorkerRunning | WorkerSucceeded | WorkerFailed | StageSkipped
)

# For each stage event: the types of the current condition it applies from, and the type it leads to.
_RULES: dict[type[StageEvent], tuple[frozenset[ConditionType], ConditionType]] = {
    EdgeReady: (frozenset({_W}), _R),
    WorkerStarting: (frozenset({_R}), _S),
    WorkerRunning: (frozenset({_S}), _RUN),
    WorkerSucceeded: (frozenset({_S, _RUN}), _C),
    WorkerFailed: (frozenset({_S, _RUN}), _F),
    StageSkipped: (frozenset({_W, _R}), _C),
}


# --------------------------------------------------------------------------- queries


def current(conditions: Sequence[Condition]) -> Condition | None:
    """The condition that drives the job: the last one, or ``None`` for a new job."""
    return conditions[-1] if conditions else None


def starts_round(condition: Condition) -> bool:
    """Whether the condition starts a training round (it is a ``Train/Ready``)."""
    return condition.stage is Stage.TRAIN and condition.type is _R


def current_round(conditions: Iterable[Condition]) -> int:
    """How many training rounds have started: the number of ``Train/Ready`` conditions."""
    return sum(1 for c in conditions if starts_round(c))


def consecutive_failures(conditions: Sequence[Condition]) -> int:
    """``Failed`` conditions since the last ``Deploy/Completed`` (the last full round)."""
    count = 0
    for cond in reversed(conditions):
        if cond.type is _C and cond.stage is Stage.DEPLOY:
            break
        if cond.type is _F:
            count += 1
    return count


def backoff_seconds(
    consecutive_failures: int, base: float = DEFAULT_BACKOFF_BASE, cap: float = DEFAULT_BACKOFF_CAP
) -> float:
    """Delay before the next start: ``0`` without failures, else ``base * 2**(n-1)`` capped at ``cap``."""
    if base < 0 or cap < 0:
        raise ValueError("backoff base and cap must not be negative")
    if consecutive_failures <= 0:
        return 0.0
    exponent = min(consecutive_failures - 1, 64)  # 2**64 * base exceeds any sane cap; no float overflow
    return float(min(cap, base * 2**exponent))


def retry_after(conditions: Sequence[Condition]) -> datetime | None:
    """When the GM may start the Train worker again after a failure, or ``None`` if it may now.

    Set while the job is in ``Train/Waiting`` or ``Train/Ready`` of an attempt that followed a
    failure: read from the ``retryAfter`` of that attempt's ``Train/Waiting`` condition.
    """
    cur = current(conditions)
    if cur is None or cur.stage is not Stage.TRAIN or cur.type not in (_W, _R):
        return None
    for cond in reversed(conditions):
        if cond.stage is Stage.TRAIN and cond.type is _W:
            return _retry_after_of(cond)
    return None


def _retry_after_of(cond: Condition) -> datetime | None:
    if not cond.data:
        return None
    try:
        data = json.loads(cond.data)
        value = data.get("retryAfter") if isinstance(data, dict) else None
        return parse_time(value) if isinstance(value, str) else None
    except ValueError:  # json.JSONDecodeError is a ValueError, and so is a bad time
        return None


# --------------------------------------------------------------------------- transition


def _new(
    type_: ConditionType, stage: Stage, now: str, *, reason: str = "", message: str = "", data: str = ""
) -> Condition:
    return Condition(
        type=type_,
        stage=stage,
        reason=reason,
        message=message,
        data=data,
        last_transition_time=now,
        last_heartbeat_time=now,
    )


def _after_completed(stage: Stage, now: str) -> Condition:
    return _new(_W, next_stage(stage), now, reason=f"{stage.value}Completed")


def _after_failed(
    history: Sequence[Condition], failed_at: datetime, now: datetime, *, base: float, cap: float
) -> Condition:
    """``Train/Waiting`` after the ``Failed`` that ends ``history``: ``retryAfter`` counts from the
    failure, the condition itself is stamped ``now``."""
    failed = history[-1]
    n = consecutive_failures(history)
    delay = backoff_seconds(n, base, cap)
    when = format_time(failed_at + timedelta(seconds=delay))
    data = json.dumps({"retryAfter": when, "consecutiveFailures": n}, separators=(",", ":"))
    message = f"{failed.stage.value} failed ({n} in a row); retry after {delay:g}s"
    return _new(
        _W,
        Stage.TRAIN,
        format_time(now),
        reason=f"{failed.stage.value}Failed",
        message=message,
        data=data,
    )


def _settle(conditions: Sequence[Condition], now: datetime, base: float, cap: float) -> list[Condition]:
    """The follow-up a history is missing: none -> Train/Waiting; Completed/Failed -> Waiting."""
    last = current(conditions)
    if last is None:
        return [_new(_W, Stage.TRAIN, format_time(now), reason=REASON_CREATED)]
    if last.type is _C:
        return [_after_completed(last.stage, format_time(now))]
    if last.type is _F:
        failed_at = now
        if last.last_transition_time:
            try:
                failed_at = parse_time(last.last_transition_time)
            except ValueError:
                failed_at = now
        return [_after_failed(conditions, failed_at, now, base=base, cap=cap)]
    return []


def transition(
    conditions: Sequence[Condition],
    event: Event,
    now: datetime | str,
    *,
    backoff_base: float = DEFAULT_BACKOFF_BASE,
    backoff_cap: float = DEFAULT_BACKOFF_CAP,
) -> list[Condition]:
    """The conditions to append to ``conditions`` for ``event`` at time ``now``.

    ``[]`` means duplicate or stale (nothing to do, ack it); :class:`StateError` means the event is
    illegal in this history. ``now`` is an aware datetime or an RFC 3339 string; new conditions get
    it, at second precision, as both transition and heartbeat time. Pure: reads no clock, no I/O.
    """
    now_dt = parse_time(now)
    settled = _settle(conditions, now_dt, backoff_base, backoff_cap)
    if isinstance(event, Created):
        return settled
    history = [*conditions, *settled]
    return settled + _apply(history, event, now_dt, base=backoff_base, cap=backoff_cap)


def _apply(
    history: list[Condition], event: StageEvent, now: datetime, *, base: float, cap: float
) -> list[Condition]:
    cur = history[-1]
    sources, target = _RULES[type(event)]
    name = type(event).__name__
    here = f"{name}({event.stage.value}) in {cur.stage.value}/{cur.type.value}"

    if isinstance(event, StageSkipped) and event.stage is Stage.TRAIN:
        raise StateError(f"{here}: the Train stage cannot be skipped")

    if event.stage is cur.stage and cur.type in sources:
        if isinstance(event, WorkerStarting):
            after = retry_after(history)
            if after is not None and now < after:
                raise StateError(f"{here}: backing off after a failure until {format_time(after)}")
        return _applied(history, event, target, now, base=base, cap=cap)

    if event.stage is cur.stage and cur.type is target:
        return []  # duplicate: resent report, or `running` while Running

    if isinstance(event, WorkerStarting):
        raise StateError(f"{here}: a worker is started only from the current Ready condition")

    relevant = sources | {target}
    if any(c.stage is event.stage and c.type in relevant for c in history):
        return []  # stale: it applied to an earlier point of this history
    raise StateError(f"{here}: never applicable in this job's history")


def _applied(
    history: list[Condition],
    event: StageEvent,
    target: ConditionType,
    now: datetime,
    *,
    base: float,
    cap: float,
) -> list[Condition]:
    stage = event.stage
    stamp = format_time(now)
    if isinstance(event, EdgeReady):
        return [_new(target, stage, stamp, message=event.message, data=event.data)]
    if isinstance(event, WorkerStarting | WorkerRunning):
        return [_new(target, stage, stamp, message=event.message)]
    if isinstance(event, WorkerSucceeded):
        done = _new(target, stage, stamp, message=event.message, data=event.data)
        return [done, _after_completed(stage, stamp)]
    if isinstance(event, StageSkipped):
        done = _new(target, stage, stamp, reason=event.reason, message=event.message, data=event.data)
        return [done, _after_completed(stage, stamp)]
    failed = _new(target, stage, stamp, reason=event.reason, message=event.message, data=event.data)
    return [failed, _after_failed([*history, failed], now, now, base=base, cap=cap)]
