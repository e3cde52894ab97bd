"""The training trigger of the API model (``LLTrigger``/``LLTimer``/``LLCondition`` in
``lifelong.common.api``), the only one the LC uses: upstream Sedna's semantics, table-driven,
with the clocks passed in (local wall time, monotonic seconds)."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any

import pytest

from lifelong.common.api import LLCondition, LLTimer, LLTrigger
from lifelong.common.api.lifelonglearningjob import DEFAULT_CHECK_PERIOD_SECONDS, EQUALITY_EPSILON


def _trigger(op: str = ">", threshold: float = 5, **extra: Any) -> LLTrigger:
    spec: dict[str, Any] = {"condition": {"operator": op, "threshold": threshold, "metric": "num_of_samples"}}
    spec.update(extra)
    return LLTrigger.model_validate(spec)


def _at(hhmm: str, second: int = 0) -> time:
    hour, minute = map(int, hhmm.split(":"))
    return time(hour, minute, second)


E = EQUALITY_EPSILON

# (operator, threshold, value, holds): both spellings of every operator, around the threshold
# and within / just outside the 1e-6 equality band.
OPERATOR_TABLE = [
    (">", 5, 6, True),
    (">", 5, 5, False),
    ("gt", 5, 5 + E / 2, False),  # equal within epsilon: not greater
    ("gt", 5, 5 + 2 * E, True),
    (">=", 5, 5, True),
    ("ge", 5, 5 - E / 2, True),  # equal within epsilon
    ("ge", 5, 5 - 2 * E, False),
    ("ge", 5, 4, False),
    ("==", 5, 5, True),
    ("=", 5, 5 + E / 2, True),
    ("eq", 5, 5 + 2 * E, False),
    ("eq", 5, 6, False),
    ("!=", 5, 6, True),
    ("ne", 5, 5 + E / 2, False),
    ("ne", 5, 5 - 2 * E, True),
    ("<=", 5, 5, True),
    ("le", 5, 5 + E / 2, True),
    ("le", 5, 5 + 2 * E, False),
    ("<", 5, 4, True),
    ("<", 5, 5, False),
    ("lt", 5, 5 - E / 2, False),
    ("lt", 5, 5 - 2 * E, True),
]


@pytest.mark.parametrize(("op", "threshold", "value", "holds"), OPERATOR_TABLE)
def test_condition_operators_with_the_equality_epsilon(
    op: str, threshold: float, value: float, holds: bool
) -> None:
    cond = LLCondition.model_validate({"operator": op, "threshold": threshold, "metric": "num_of_samples"})
    assert cond.holds(value) is holds


def test_the_table_covers_every_operator() -> None:
    assert {row[0] for row in OPERATOR_TABLE} == {
        ">", ">=", "==", "=", "!=", "<=", "<", "gt", "ge", "eq", "ne", "le", "lt"
    }  # fmt: skip


@pytest.mark.parametrize(("op", "threshold"), [("<", 5), ("<=", 0), ("==", 0), ("!=", 3)])
def test_never_fires_with_zero_new_samples(op: str, threshold: float) -> None:
    trig = _trigger(op, threshold)
    assert trig.condition.holds(0) is (op != "!=" or threshold != 0)  # the condition alone may hold
    assert not trig.condition_holds(0)
    assert not trig.fires(0, _at("12:00"), 0.0, None)


@pytest.mark.parametrize(
    ("start", "end", "now", "inside"),
    [
        # 24:00 closes the day: 02:00-24:00 (the atcii example) includes 23:59
        ("02:00", "24:00", "02:00", True),
        ("02:00", "24:00", "23:59", True),
        ("02:00", "24:00", "12:00", True),
        ("02:00", "24:00", "00:00", False),
        ("02:00", "24:00", "01:59", False),
        ("00:00", "24:00", "00:00", True),  # the whole day
        ("00:00", "24:00", "23:59", True),
        # both ends included
        ("08:00", "18:00", "08:00", True),
        ("08:00", "18:00", "18:00", True),
        ("08:00", "18:00", "18:01", False),
        ("08:00", "18:00", "07:59", False),
        # 22:00-02:00 wraps past midnight: before, inside (both sides), after
        ("22:00", "02:00", "21:59", False),
        ("22:00", "02:00", "22:00", True),
        ("22:00", "02:00", "23:30", True),
        ("22:00", "02:00", "00:00", True),
        ("22:00", "02:00", "02:00", True),
        ("22:00", "02:00", "02:01", False),
        ("22:00", "02:00", "12:00", False),
        # start == end: that one minute only
        ("05:00", "05:00", "05:00", True),
        ("05:00", "05:00", "04:59", False),
        ("05:00", "05:00", "05:01", False),
        ("05:00", "05:00", "12:00", False),
    ],
)
def test_timer_window(start: str, end: str, now: str, inside: bool) -> None:
    timer = LLTimer(start=start, end=end)
    assert timer.contains(_at(now)) is inside
    assert timer.contains(_at(now, 59)) is inside  # minute resolution: the seconds do not count
    trig = _trigger(timer={"start": start, "end": end})
    wall = datetime(2026, 1, 1, *map(int, now.split(":")), 30)  # a datetime works as well
    assert trig.in_window(wall) is inside
    assert trig.fires(6, wall, 0.0, None) is inside


def test_without_a_timer_every_time_of_day_is_inside() -> None:
    trig = _trigger()
    assert all(trig.in_window(time(h, m)) for h in range(24) for m in (0, 59))


@pytest.mark.parametrize(
    ("period", "last", "now", "due"),
    [
        (None, None, 0.0, True),  # the first check at once
        (None, 100.0, 159.9, False),  # default period: 60 s
        (None, 100.0, 160.0, True),
        (10, 100.0, 109.9, False),
        (10, 100.0, 110.0, True),
        (1, 5.0, 6.0, True),
    ],
)
def test_check_period(period: int | None, last: float | None, now: float, due: bool) -> None:
    trig = _trigger(**({} if period is None else {"checkPeriodSeconds": period}))
    assert trig.period == (period or DEFAULT_CHECK_PERIOD_SECONDS)
    assert trig.due(now, last) is due
    assert trig.fires(6, _at("12:00"), now, last) is due


def test_the_default_period_is_60_seconds() -> None:
    assert DEFAULT_CHECK_PERIOD_SECONDS == 60
    assert _trigger().check_period_seconds is None
    assert _trigger().period == 60


def test_all_rules_must_hold_to_fire() -> None:
    trig = _trigger(">", 500, checkPeriodSeconds=60, timer={"start": "02:00", "end": "24:00"})
    assert trig.fires(501, _at("23:59"), 1000.0, None)
    assert not trig.fires(500, _at("23:59"), 1000.0, None)  # condition
    assert not trig.fires(501, _at("01:00"), 1000.0, None)  # window
    assert not trig.fires(501, _at("23:59"), 1000.0, 990.0)  # period
