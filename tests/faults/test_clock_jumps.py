"""The LC's wall clock jumps forward and back (the trigger is ``LLTrigger`` of ``lifelong.common.api``).

The trigger engine and the manager take their clocks as arguments, so the jumps are injected:
``checkPeriodSeconds`` runs on the monotonic clock (a wall jump neither hastens nor delays a
check), the timer window follows the wall clock, and a round fires once whatever the clocks do.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from harness.faults import Tally
from harness.lc_objects import cond, dataset, job

from lifelong.common.api import LLTrigger
from lifelong.edge.dataset_monitor import DatasetMonitor
from lifelong.edge.db import Store
from lifelong.edge.manager import Manager
from lifelong.edge.outbox import Outbox

pytestmark = pytest.mark.faults

NODE = "node-a"
DAY = datetime(2026, 11, 30)


class Clocks:
    """A wall clock that tests move (and jump) and a monotonic one that only moves forward."""

    def __init__(self, wall: datetime) -> None:
        self.wall = wall
        self.mono = 1000.0

    def tick(self, seconds: float, jump: timedelta = timedelta(0)) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds) + jump


def _trigger(period: int = 60, window: tuple[str, str] | None = ("10:00", "11:00")) -> LLTrigger:
    spec: dict[str, object] = {
        "checkPeriodSeconds": period,
        "condition": {"operator": ">", "threshold": 5, "metric": "num_of_samples"},
    }
    if window:
        spec["timer"] = {"start": window[0], "end": window[1]}
    return LLTrigger.model_validate(spec)


@pytest.mark.parametrize("jump", [timedelta(days=3), timedelta(hours=-5), timedelta(days=-400)])
def test_the_period_ignores_wall_clock_jumps(jump: timedelta) -> None:
    t = _trigger(window=None)
    c = Clocks(DAY.replace(hour=10))
    last = c.mono
    c.tick(1, jump)  # the wall clock jumps; only 1 s passed
    assert not t.fires(10, c.wall, c.mono, last)
    c.tick(58)
    assert not t.fires(10, c.wall, c.mono, last)
    c.tick(1)  # 60 s of real time
    assert t.fires(10, c.wall, c.mono, last)


def test_the_window_follows_the_wall_clock_both_ways() -> None:
    t = _trigger(period=1)
    c = Clocks(DAY.replace(hour=9, minute=59))
    assert not t.fires(10, c.wall, c.mono, None)
    c.tick(1, timedelta(minutes=30))  # forward into the window
    assert t.fires(10, c.wall, c.mono, c.mono - 1)
    c.tick(1, timedelta(hours=-2))  # back out of it
    assert not t.fires(10, c.wall, c.mono, c.mono - 1)
    c.tick(1, timedelta(days=1, hours=2))  # the next day, inside again
    assert t.fires(10, c.wall, c.mono, c.mono - 1)


def test_a_round_fires_once_however_the_wall_clock_jumps(tmp_path: Path) -> None:
    """The manager on a real state: wall jumps around the window never fire a round twice."""
    store = Store(tmp_path / "lc.db", sync="normal")
    box = Outbox(store)
    data = tmp_path / "d.txt"
    data.write_text("".join(f"s{i}\n" for i in range(10)))
    store.put_resource("Dataset", "default", "ds", "1", dataset("ds", NODE, data))
    j = job("j", NODE, "ds", tmp_path / "out", [cond("Train", "Waiting")])
    j["spec"]["trainSpec"]["trigger"]["checkPeriodSeconds"] = 60
    j["spec"]["trainSpec"]["trigger"]["timer"] = {"start": "10:00", "end": "11:00"}
    store.put_resource("LifelongLearningJob", "default", "j", "2", j)
    c = Clocks(DAY.replace(hour=9, minute=59))
    m = Manager(store, box, NODE, DatasetMonitor(), local_now=lambda: c.wall, mono=lambda: c.mono)

    def fired() -> int:
        box.window = 1 << 20
        return sum(1 for e in box.due() if e.body.get("event") == "ready" and e.body.get("stage") == "Train")

    try:
        m.step()  # outside the window: checked, not fired
        assert fired() == 0
        c.tick(1, timedelta(minutes=30))  # jump into the window, but the period has not run out
        m.step()
        assert fired() == 0
        c.tick(59)
        m.step()
        assert fired() == 1
        for jump in (timedelta(hours=-1), timedelta(minutes=61), timedelta(days=-1), timedelta(days=2)):
            c.tick(61, jump)
            m.step()
            assert fired() == 1  # the round is recorded: no second Train/ready for it
        m2 = Manager(store, box, NODE, DatasetMonitor(), local_now=lambda: c.wall, mono=lambda: 0.0)
        m2.step()  # a restart (the monotonic clock starts again) with the wall clock anywhere
        assert fired() == 1
        t = Tally(
            "LC wall clock jumps (+30 min, -1 h, +61 min, -1 day, +2 days, restart)", "-", runs=1, tried=1
        )
        t.applied = fired()
        t.note = "period on the monotonic clock, window on the wall clock; the round fired once"
        t.record()
    finally:
        store.close()
