"""The training trigger engine: pure functions over a job's ``trainSpec.trigger``.

Called by the lifelong-learning manager (``manager.py``) on every poll of a job in
``Train/Waiting``. No I/O and no clock of its own: the caller passes the local wall time
(``datetime``, naive = the node's local time, as the timer window is written) and a
monotonic "now" in seconds, so the rules are unit-tested with a fake clock.

Semantics (Sedna's, with its gaps filled):

* ``condition{metric, operator, threshold}``: ``metric`` is ``num_of_samples`` (new samples
  since the last trigger fired); ``operator`` is one of ``> >= == != <= <`` or
  ``gt ge eq ne le lt``. Without a condition the trigger fires on any new sample.
* ``checkPeriodSeconds``: the condition is evaluated at most once per period (the first
  evaluation happens at once); ``None`` or ``0`` means every poll.
* ``timer{start, end}`` ``HH:MM``: the trigger only fires inside the window, in local time,
  start inclusive and end exclusive; ``end < start`` wraps past midnight
  (``22:00``-``02:00``); ``start == end`` means the whole day.
* Never fires with zero new samples (there would be nothing to train on).
* Clock jumps: the period runs on the monotonic clock, so a wall-clock jump (NTP step, a
  wrong RTC at boot) neither hastens nor delays the next check; the timer window reads the
  wall clock, so a jump into or out of the window takes effect at the next check. A round
  fires once whatever the clocks do (its round number and sample cursor are stored).
"""

from __future__ import annotations

import operator as _op
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

from lifelong.common.errors import ValidationError

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": _op.gt,
    ">=": _op.ge,
    "==": _op.eq,
    "!=": _op.ne,
    "<=": _op.le,
    "<": _op.lt,
    "gt": _op.gt,
    "ge": _op.ge,
    "eq": _op.eq,
    "ne": _op.ne,
    "le": _op.le,
    "lt": _op.lt,
}
METRICS = ("num_of_samples",)


def parse_hhmm(value: Any, field: str) -> time:
    if not isinstance(value, str):
        raise ValidationError([(field, "must be a string HH:MM")], source="trigger")
    parts = value.strip().split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        hour, minute = int(parts[0]), int(parts[1])
        return time(hour, minute)
    except ValueError:
        raise ValidationError([(field, f"{value!r} is not a time HH:MM")], source="trigger") from None


@dataclass(frozen=True, slots=True)
class Trigger:
    """A parsed ``trainSpec.trigger``."""

    operator: str | None = None
    threshold: float = 0.0
    metric: str = "num_of_samples"
    check_period: float = 0.0
    start: time | None = None
    end: time | None = None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Trigger:
        """Parse the API's camelCase trigger; raises ``ValidationError`` naming the field."""
        spec = spec or {}
        cond = spec.get("condition") or {}
        op = cond.get("operator")
        if op is not None and op not in OPERATORS:
            raise ValidationError(
                [("trigger.condition.operator", f"{op!r} is not one of {' '.join(OPERATORS)}")],
                source="trigger",
            )
        metric = cond.get("metric") or "num_of_samples"
        if metric not in METRICS:
            raise ValidationError(
                [("trigger.condition.metric", f"{metric!r} is not supported (only num_of_samples)")],
                source="trigger",
            )
        try:
            threshold = float(cond.get("threshold", 0) or 0)
        except (TypeError, ValueError):
            raise ValidationError(
                [("trigger.condition.threshold", "must be a number")], source="trigger"
            ) from None
        try:
            period = float(spec.get("checkPeriodSeconds") or 0)
        except (TypeError, ValueError):
            raise ValidationError(
                [("trigger.checkPeriodSeconds", "must be a number")], source="trigger"
            ) from None
        if period < 0:
            raise ValidationError([("trigger.checkPeriodSeconds", "must not be negative")], source="trigger")
        timer = spec.get("timer") or {}
        start = end = None
        if timer:
            start = parse_hhmm(timer.get("start"), "trigger.timer.start")
            end = parse_hhmm(timer.get("end"), "trigger.timer.end")
        return cls(op, threshold, metric, period, start, end)

    # -- the rules ------------------------------------------------------------------------------
    def due(self, now_mono: float, last_check: float | None) -> bool:
        """Is it time to evaluate the condition again (``checkPeriodSeconds``)?"""
        if last_check is None or self.check_period <= 0:
            return True
        return now_mono - last_check >= self.check_period

    def in_window(self, local_now: datetime) -> bool:
        """Is ``local_now`` inside the timer window (always, without a timer)?"""
        if self.start is None or self.end is None or self.start == self.end:
            return True
        t = local_now.time().replace(second=0, microsecond=0, tzinfo=None)
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def condition_holds(self, num_of_samples: int) -> bool:
        if num_of_samples <= 0:
            return False
        if self.operator is None:
            return True
        return OPERATORS[self.operator](float(num_of_samples), self.threshold)

    def fires(
        self, num_of_samples: int, local_now: datetime, now_mono: float, last_check: float | None
    ) -> bool:
        """All three rules at once: period elapsed, inside the window, condition true."""
        return (
            self.due(now_mono, last_check)
            and self.in_window(local_now)
            and self.condition_holds(num_of_samples)
        )
