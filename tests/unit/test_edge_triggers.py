"""The training trigger engine (``lifelong.edge.triggers``): pure, table-driven, fake clock."""

from __future__ import annotations

from datetime import datetime

import pytest

from lifelong.common.errors import ValidationError
from lifelong.edge.triggers import OPERATORS, Trigger


def _t(op: str | None, threshold: float = 0, **extra: object) -> Trigger:
    spec: dict[str, object] = dict(extra)
    if op is not None:
        spec["condition"] = {"operator": op, "threshold": threshold, "metric": "num_of_samples"}
    return Trigger.from_spec(spec)


@pytest.mark.parametrize(
    ("op", "threshold", "samples", "fires"),
    [
        (">", 5, 5, False),
        (">", 5, 6, True),
        ("gt", 5, 6, True),
        (">=", 5, 5, True),
        ("ge", 5, 4, False),
        ("==", 5, 5, True),
        ("eq", 5, 6, False),
        ("!=", 5, 6, True),
        ("ne", 5, 5, False),
        ("<=", 5, 5, True),
        ("le", 5, 6, False),
        ("<", 5, 4, True),
        ("lt", 5, 5, False),
        ("<", 5, 0, False),  # never with zero new samples
        (None, 0, 1, True),  # no condition: any new sample
        (None, 0, 0, False),
    ],
)
def test_operators(op: str | None, threshold: float, samples: int, fires: bool) -> None:
    assert _t(op, threshold).condition_holds(samples) is fires


def test_every_operator_is_covered() -> None:
    assert set(OPERATORS) == {">", ">=", "==", "!=", "<=", "<", "gt", "ge", "eq", "ne", "le", "lt"}


@pytest.mark.parametrize(
    ("start", "end", "hhmm", "inside"),
    [
        ("08:00", "18:00", "08:00", True),
        ("08:00", "18:00", "17:59", True),
        ("08:00", "18:00", "18:00", False),
        ("08:00", "18:00", "07:59", False),
        ("22:00", "02:00", "23:30", True),  # wraps past midnight
        ("22:00", "02:00", "00:00", True),
        ("22:00", "02:00", "01:59", True),
        ("22:00", "02:00", "02:00", False),
        ("22:00", "02:00", "12:00", False),
        ("05:00", "05:00", "12:00", True),  # start == end: the whole day
    ],
)
def test_timer_window(start: str, end: str, hhmm: str, inside: bool) -> None:
    trig = _t(">", 0, timer={"start": start, "end": end})
    hour, minute = map(int, hhmm.split(":"))
    now = datetime(2026, 1, 1, hour, minute, 30)
    assert trig.in_window(now) is inside
    assert trig.fires(1, now, 0.0, None) is inside


@pytest.mark.parametrize(
    ("period", "last", "now", "due"),
    [
        (60, None, 0.0, True),  # first evaluation at once
        (60, 100.0, 159.9, False),
        (60, 100.0, 160.0, True),
        (0, 100.0, 100.0, True),  # 0: every poll
    ],
)
def test_check_period(period: float, last: float | None, now: float, due: bool) -> None:
    trig = _t(">", 0, checkPeriodSeconds=period)
    assert trig.due(now, last) is due
    assert trig.fires(1, datetime(2026, 1, 1, 12, 0), now, last) is due


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"condition": {"operator": "~", "threshold": 1}}, "trigger.condition.operator"),
        ({"condition": {"operator": ">", "metric": "precision"}}, "trigger.condition.metric"),
        ({"condition": {"operator": ">", "threshold": "many"}}, "trigger.condition.threshold"),
        ({"checkPeriodSeconds": -1}, "trigger.checkPeriodSeconds"),
        ({"timer": {"start": "25:00", "end": "01:00"}}, "trigger.timer.start"),
        ({"timer": {"start": "01:00", "end": "1am"}}, "trigger.timer.end"),
    ],
)
def test_bad_trigger_names_the_field(spec: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Trigger.from_spec(spec)
    assert info.value.path == field
