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
  inputs found) and reads :func:`current` and :func:`current_round`.

The machine, for a stage S (Train -> Eval -> Deploy -> Train ...)::

    (no conditions) --Created--> Train/Waiting

    S/Waiting --EdgeReady--> S/Ready --WorkerStarting--> S/Starting --WorkerRunning--> S/Running
       |                        |                           |                             |
       | StageSkipped           | StageSkipped              | WorkerSucceeded             | WorkerSucceeded
       | (Eval, Deploy)         | (Eval, Deploy)            | WorkerFailed                | WorkerFailed
       v                        v                           v                             v

    on WorkerSucceeded / StageSkipped:  S/Completed + next_stage(S)/Waiting  (Deploy -> Train: next round)
    on WorkerFailed, a retry left:      S/Failed + S/Ready (reason Retry; the failed attempt's
                                        data, plus retryAfter and the attempt numbers)
    on WorkerFailed, none left:         S/Failed + Train/Waiting             (the round is given up)

    "A + B": both conditions are returned by the same call, so a history never stops at A.

``transition(history, event, now)`` returns the conditions to **append** (never edits one):

* ``Completed`` is always followed, in the same return, by the next stage's ``Waiting``;
  ``Failed`` by its retry (``S/Ready``) or, once the retries are used up, ``Train/Waiting``.
  A history that nevertheless ends in ``Completed`` or ``Failed`` (written by upstream Sedna's
  GM, which appends them in separate updates) is *settled* first: every call prepends the
  missing follow-up, and ``Created`` returns only it.
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

Failures, retries and backoff: a failed attempt of a stage (its worker failed, or could not be
started) is retried on the same data, after a backoff, up to a limit. ``Failed`` and what
follows it are appended together, immediately, so a crash can never leave a job parked on
``Failed``:

* while retries are left (attempt ``k`` failed, ``k <= retry_limit``): ``S/Ready`` with reason
  ``Retry``. Its ``data`` is the ``data`` of the ``S/Ready`` that started the failed attempt
  (the same train/eval files, the same models), plus ``retryAfter`` (RFC 3339: the failure time
  plus ``backoff_seconds(k)``, 10 s doubling, capped at 360 s, like Kubernetes' job backoff),
  ``attempt`` (``k + 1``) and ``maxAttempts`` (``retry_limit + 1``). The GM starts the worker
  again once ``retryAfter`` has passed (it requeues the job's key for then); this module refuses
  an earlier ``WorkerStarting``. Nothing on the edge acts on a ``Ready``: the LC neither fires
  its trigger nor takes new samples while a retry waits. The message says when, which attempt,
  the limit and what follows the last failure;
* once the retries are used up (attempt ``retry_limit + 1`` failed): ``Train/Waiting``, reason
  ``<S>Failed``, no ``retryAfter``: the round is given up, and the next one starts when the Train
  trigger fires on samples that arrived after the given-up round's (the LC's cursor has moved
  past those);
* a ``Failed`` that ends no attempt (the condition before it is not the stage's ``Starting`` or
  ``Running``: e.g. the GM's validation refused the job): ``Train/Waiting`` as well.

A retry is the same round: :func:`starts_round` does not count a ``Ready`` of reason ``Retry``,
and :func:`attempt` says which attempt of a stage the history is in (the GM names a retried
worker after it, ``{job}-{stage}-{round}-retry{attempt - 1}``).

Rounds: :func:`current_round` is the number of ``Train/Ready`` conditions that are not retries,
i.e. how many times the training trigger fired (upstream's LC counter ``sedna.io/rounds``,
incremented when the trigger fires; a retry of a failed attempt keeps its round). It is derived
from the append-only history, not stored in a field, so conditions keep upstream's exact shape
and the LC can recover its round after a restart from the conditions alone. ``0`` means never triggered.

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
    "DEFAULT_RETRY_LIMIT",
    "MAX_RETRY_LIMIT",
    "REASON_RETRY",
    "Condition",
    "Created",
    "EdgeReady",
    "Event",
    "StageSkipped",
    "WorkerFailed",
    "WorkerRunning",
    "WorkerStarting",
    "WorkerSucceeded",
    "attempt",
    "backoff_seconds",
    "current",
    "current_round",
    "format_time",
    "is_retry",
    "parse_time",
    "retry_after",
    "starts_round",
    "transition",
]

DEFAULT_BACKOFF_BASE = 10.0
"""Seconds before the first retry after a failure (Kubernetes' DefaultJobBackOff)."""
DEFAULT_BACKOFF_CAP = 360.0
"""Longest wait between retries (Kubernetes' MaxJobBackOff)."""
MAX_RETRY_LIMIT = 999
"""The highest retry limit: a retried worker's name ends in ``-retry{n}``, and the longest job
name leaves room for three digits of ``n``."""
DEFAULT_RETRY_LIMIT = 6
"""Retries of a failed stage on the same data before its round is given up (Kubernetes' default
``backoffLimit``): with the default backoff they wait 10, 20, 40, 80, 160 and 320 s."""

REASON_CREATED = "JobCreated"
REASON_SKIPPED = "Skipped"
REASON_WORKER_FAILED = "WorkerFailed"
REASON_RETRY = "Retry"
"""Reason of a ``Ready`` the GM appends to retry a failed attempt on the same data."""

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


def is_retry(condition: Condition) -> bool:
    """Whether the condition is a ``Ready`` that retries a failed attempt (reason ``Retry``)."""
    return condition.type is _R and condition.reason == REASON_RETRY


def starts_round(condition: Condition) -> bool:
    """Whether the condition starts a training round (a ``Train/Ready`` that is not a retry)."""
    return condition.stage is Stage.TRAIN and condition.type is _R and not is_retry(condition)


def current_round(conditions: Iterable[Condition]) -> int:
    """How many training rounds have started: the number of ``Train/Ready`` that are not retries."""
    return sum(1 for c in conditions if starts_round(c))


def attempt(conditions: Sequence[Condition], stage: Stage) -> int:
    """Which attempt of ``stage`` its last ``Ready`` started: 1 for the first, ``n + 1`` after
    ``n`` retries (the ``Ready`` conditions of reason ``Retry`` since the stage's last other one)."""
    retries = 0
    for cond in reversed(conditions):
        if cond.stage is stage and cond.type is _R:
            if not is_retry(cond):
                break
            retries += 1
    return retries + 1


def _last_ready(conditions: Sequence[Condition], stage: Stage) -> Condition | None:
    for cond in reversed(conditions):
        if cond.stage is stage and cond.type is _R:
            return cond
    return None


def backoff_seconds(
    failed_attempts: int, base: float = DEFAULT_BACKOFF_BASE, cap: float = DEFAULT_BACKOFF_CAP
) -> float:
    """Delay before the next attempt: ``0`` without failures, else ``base * 2**(n-1)`` capped at ``cap``."""
    if base < 0 or cap < 0:
        raise ValueError("backoff base and cap must not be negative")
    if failed_attempts <= 0:
        return 0.0
    exponent = min(failed_attempts - 1, 64)  # 2**64 * base exceeds any sane cap; no float overflow
    return float(min(cap, base * 2**exponent))


def retry_after(conditions: Sequence[Condition]) -> datetime | None:
    """When the GM may start the worker of a retry, or ``None`` if it may now (or nothing waits).

    Set while the current condition is a retry's ``Ready``: its ``retryAfter``.
    """
    cur = current(conditions)
    if cur is None or not is_retry(cur):
        return None
    return _retry_after_of(cur)


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


def _data_dict(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        return {}
    return dict(value) if isinstance(value, dict) else {}


def _after_failed(
    history: Sequence[Condition], failed_at: datetime, now: datetime, *, base: float, cap: float, limit: int
) -> Condition:
    """What follows the ``Failed`` that ends ``history``: the retry of the failed attempt (``S/Ready``
    with its data) while retries are left, else ``Train/Waiting``. ``retryAfter`` counts from the
    failure; the condition itself is stamped ``now``."""
    failed = history[-1]
    stage = failed.stage
    before = history[-2] if len(history) >= 2 else None
    stamp = format_time(now)
    rnd = current_round(history)
    if before is None or before.stage is not stage or before.type not in (_S, _RUN):
        message = (
            f"{stage.value} failed ({failed.reason or 'no reason given'}) with no worker attempt under way: "
            "nothing to retry; the next round starts when the Train trigger fires"
        )
        return _new(_W, Stage.TRAIN, stamp, reason=f"{stage.value}Failed", message=message)
    failed_attempt = attempt(history, stage)
    attempts = min(max(0, limit), MAX_RETRY_LIMIT) + 1
    given_up = (
        f"round {rnd} is given up and the next round starts when the Train trigger fires on new samples"
    )
    if failed_attempt >= attempts:
        message = f"{stage.value} attempt {failed_attempt} of {attempts} failed, the last one: {given_up}"
        return _new(_W, Stage.TRAIN, stamp, reason=f"{stage.value}Failed", message=message)
    delay = backoff_seconds(failed_attempt, base, cap)
    when = format_time(failed_at + timedelta(seconds=delay))
    started = _last_ready(history, stage)
    data = _data_dict(started.data) if started is not None else {}
    data.update(retryAfter=when, attempt=failed_attempt + 1, maxAttempts=attempts)
    nxt = failed_attempt + 1
    then = (
        f"if it fails too, {given_up}" if nxt == attempts else f"after {attempts} failed attempts {given_up}"
    )
    message = (
        f"{stage.value} attempt {failed_attempt} of {attempts} failed; attempt {nxt} starts at {when} "
        f"(after a {delay:g}s backoff) on the same data, in round {rnd}; {then}"
    )
    return _new(
        _R, stage, stamp, reason=REASON_RETRY, message=message, data=json.dumps(data, separators=(",", ":"))
    )


def _settle(
    conditions: Sequence[Condition], now: datetime, base: float, cap: float, limit: int
) -> list[Condition]:
    """The follow-up a history is missing: none -> Train/Waiting; Completed -> the next stage's
    Waiting; Failed -> its retry or Train/Waiting."""
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
        return [_after_failed(conditions, failed_at, now, base=base, cap=cap, limit=limit)]
    return []


def transition(
    conditions: Sequence[Condition],
    event: Event,
    now: datetime | str,
    *,
    backoff_base: float = DEFAULT_BACKOFF_BASE,
    backoff_cap: float = DEFAULT_BACKOFF_CAP,
    retry_limit: int = DEFAULT_RETRY_LIMIT,
) -> list[Condition]:
    """The conditions to append to ``conditions`` for ``event`` at time ``now``.

    ``[]`` means duplicate or stale (nothing to do, ack it); :class:`StateError` means the event is
    illegal in this history. ``now`` is an aware datetime or an RFC 3339 string; new conditions get
    it, at second precision, as both transition and heartbeat time. A failed attempt is retried
    up to ``retry_limit`` times (at most ``MAX_RETRY_LIMIT``), after ``backoff_base`` seconds
    doubling up to ``backoff_cap``. Pure: reads no clock, no I/O.
    """
    now_dt = parse_time(now)
    settled = _settle(conditions, now_dt, backoff_base, backoff_cap, retry_limit)
    if isinstance(event, Created):
        return settled
    history = [*conditions, *settled]
    return settled + _apply(history, event, now_dt, base=backoff_base, cap=backoff_cap, limit=retry_limit)


def _apply(
    history: list[Condition], event: StageEvent, now: datetime, *, base: float, cap: float, limit: int
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
        return _applied(history, event, target, now, base=base, cap=cap, limit=limit)

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
    limit: int,
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
    return [failed, _after_failed([*history, failed], now, now, base=base, cap=cap, limit=limit)]
