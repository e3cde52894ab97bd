"""The LifelongLearningJob state machine (lifelong.common.statemachine): every transition,
duplicates, stale and illegal events, backoff, rounds and the condition dict form."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.common.errors import StateError, ValidationError
from lifelong.common.stages import ConditionType, Stage
from lifelong.common.statemachine import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    Condition,
    Created,
    EdgeReady,
    Event,
    StageSkipped,
    WorkerFailed,
    WorkerRunning,
    WorkerStarting,
    WorkerSucceeded,
    backoff_seconds,
    consecutive_failures,
    current,
    current_round,
    format_time,
    parse_time,
    retry_after,
    transition,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
T0S = "2024-05-01T12:00:00Z"

TRAIN, EVAL, DEPLOY = Stage.TRAIN, Stage.EVAL, Stage.DEPLOY
W, R, S, RUN, C, F = (
    ConditionType.WAITING,
    ConditionType.READY,
    ConditionType.STARTING,
    ConditionType.RUNNING,
    ConditionType.COMPLETED,
    ConditionType.FAILED,
)

# One full round written out literally (not produced by the machine under test).
ROUND = [(stage, t) for stage in (TRAIN, EVAL, DEPLOY) for t in (W, R, S, RUN, C)]


def cond(stage: Stage, type_: ConditionType, **kw: str) -> Condition:
    return Condition(type=type_, stage=stage, last_transition_time=T0S, last_heartbeat_time=T0S, **kw)


def at(stage: Stage, type_: ConditionType, *, rounds_before: int = 0) -> list[Condition]:
    """A literal history that ends in ``stage/type_``, after ``rounds_before`` complete rounds."""
    pairs = ROUND * rounds_before + ROUND[: ROUND.index((stage, type_)) + 1]
    return [cond(s, t) for s, t in pairs]


ROUND_CONDS = [cond(s, t) for s, t in ROUND]


def kinds(conditions: Sequence[Condition]) -> list[tuple[str, str]]:
    return [(c.stage.value, c.type.value) for c in conditions]


def pairs(*items: tuple[Stage, ConditionType]) -> list[tuple[str, str]]:
    return [(s.value, t.value) for s, t in items]


# --------------------------------------------------------------------------- applied transitions

APPLIED = [
    pytest.param([], Created(), pairs((TRAIN, W)), id="none-Created->Train/Waiting"),
    *[
        pytest.param(at(st_, W), EdgeReady(st_), pairs((st_, R)), id=f"{st_}/Waiting-EdgeReady->Ready")
        for st_ in Stage
    ],
    *[
        pytest.param(
            at(st_, R), WorkerStarting(st_), pairs((st_, S)), id=f"{st_}/Ready-WorkerStarting->Starting"
        )
        for st_ in Stage
    ],
    *[
        pytest.param(
            at(st_, S), WorkerRunning(st_), pairs((st_, RUN)), id=f"{st_}/Starting-WorkerRunning->Running"
        )
        for st_ in Stage
    ],
    pytest.param(
        at(TRAIN, RUN),
        WorkerSucceeded(TRAIN),
        pairs((TRAIN, C), (EVAL, W)),
        id="Train/Running-Succeeded->Eval",
    ),
    pytest.param(
        at(EVAL, RUN),
        WorkerSucceeded(EVAL),
        pairs((EVAL, C), (DEPLOY, W)),
        id="Eval/Running-Succeeded->Deploy",
    ),
    pytest.param(
        at(DEPLOY, RUN),
        WorkerSucceeded(DEPLOY),
        pairs((DEPLOY, C), (TRAIN, W)),
        id="Deploy/Running-Succeeded->Train(next round)",
    ),
    *[
        pytest.param(
            at(st_, S),
            WorkerSucceeded(st_),
            pairs((st_, C), ({TRAIN: EVAL, EVAL: DEPLOY, DEPLOY: TRAIN}[st_], W)),
            id=f"{st_}/Starting-Succeeded->Completed(no synthetic Running)",
        )
        for st_ in Stage
    ],
    *[
        pytest.param(
            at(st_, S), WorkerFailed(st_), pairs((st_, F), (TRAIN, W)), id=f"{st_}/Starting-Failed->Train"
        )
        for st_ in Stage
    ],
    *[
        pytest.param(
            at(st_, RUN), WorkerFailed(st_), pairs((st_, F), (TRAIN, W)), id=f"{st_}/Running-Failed->Train"
        )
        for st_ in Stage
    ],
    pytest.param(
        at(EVAL, W), StageSkipped(EVAL), pairs((EVAL, C), (DEPLOY, W)), id="Eval/Waiting-Skipped->Deploy"
    ),
    pytest.param(
        at(EVAL, R), StageSkipped(EVAL), pairs((EVAL, C), (DEPLOY, W)), id="Eval/Ready-Skipped->Deploy"
    ),
    pytest.param(
        at(DEPLOY, W),
        StageSkipped(DEPLOY),
        pairs((DEPLOY, C), (TRAIN, W)),
        id="Deploy/Waiting-Skipped->Train",
    ),
    pytest.param(
        at(DEPLOY, R), StageSkipped(DEPLOY), pairs((DEPLOY, C), (TRAIN, W)), id="Deploy/Ready-Skipped->Train"
    ),
    pytest.param(
        at(TRAIN, W, rounds_before=1),
        EdgeReady(TRAIN),
        pairs((TRAIN, R)),
        id="round2-Train/Waiting-EdgeReady->Ready",
    ),
]


@pytest.mark.parametrize(("history", "event", "expected"), APPLIED)
def test_applied_transition(history: list[Condition], event: Event, expected: list[tuple[str, str]]) -> None:
    out = transition(history, event, T0)
    assert kinds(out) == expected
    for c in out:
        assert c.status == "True"
        assert c.last_transition_time == T0S
        assert c.last_heartbeat_time == T0S


@pytest.mark.parametrize(("history", "event", "expected"), APPLIED)
def test_resent_event_appends_nothing(history: list[Condition], event: Event, expected: object) -> None:
    """Guarantee 1: a resent report (or a repeated GM decision) never appends a second condition."""
    first = transition(history, event, T0)
    assert first, "the event must apply the first time"
    later = T0 + timedelta(hours=1)  # past any backoff
    assert transition([*history, *first], event, later) == []


def test_transition_does_not_mutate_its_input() -> None:
    history = at(TRAIN, RUN)
    snapshot = list(history)
    transition(history, WorkerSucceeded(TRAIN), T0)
    assert history == snapshot


def test_created_on_a_live_history_appends_nothing() -> None:
    assert transition(at(EVAL, RUN), Created(), T0) == []


def test_payloads_land_on_the_new_conditions() -> None:
    inp = json.dumps({"input": {"dataURL": "/data/train/1/data.txt"}})
    (ready,) = transition(at(TRAIN, W), EdgeReady(TRAIN, data=inp, message="reported by lc"), T0)
    assert (ready.data, ready.message) == (inp, "reported by lc")

    out = json.dumps({"output": {"models": [{"format": "pkl", "url": "/out/train/1/model.pkl"}]}})
    done, nxt = transition(at(TRAIN, RUN), WorkerSucceeded(TRAIN, data=out), T0)
    assert done.data == out
    assert (nxt.data, nxt.reason) == ("", "TrainCompleted")

    failed, _ = transition(at(EVAL, RUN), WorkerFailed(EVAL, "OOMKilled", "exit code 137", data="{}"), T0)
    assert (failed.reason, failed.message, failed.data) == ("OOMKilled", "exit code 137", "{}")

    skipped, _ = transition(at(DEPLOY, W), StageSkipped(DEPLOY, message="no model to deploy"), T0)
    assert (skipped.type, skipped.reason, skipped.message) == (C, "Skipped", "no model to deploy")


# --------------------------------------------------------------------------- duplicates and stale

DUPLICATE_OR_STALE = [
    *[pytest.param(at(st_, R), EdgeReady(st_), id=f"dup-{st_}/Ready-EdgeReady") for st_ in Stage],
    *[
        pytest.param(at(st_, S), WorkerStarting(st_), id=f"dup-{st_}/Starting-WorkerStarting")
        for st_ in Stage
    ],
    *[
        pytest.param(at(st_, RUN), WorkerRunning(st_), id=f"dup-{st_}/Running-WorkerRunning(upstream bug)")
        for st_ in Stage
    ],
    pytest.param(at(TRAIN, S), EdgeReady(TRAIN), id="stale-Train/Starting-late-EdgeReady"),
    pytest.param(at(TRAIN, RUN), EdgeReady(TRAIN), id="stale-Train/Running-late-EdgeReady"),
    pytest.param(at(EVAL, W), WorkerSucceeded(TRAIN), id="stale-Eval/Waiting-resent-Train-Succeeded"),
    pytest.param(at(EVAL, W), WorkerRunning(TRAIN), id="stale-Eval/Waiting-late-Train-Running"),
    pytest.param(at(EVAL, R), EdgeReady(TRAIN), id="stale-Eval/Ready-late-Train-EdgeReady"),
    pytest.param(at(DEPLOY, RUN), WorkerFailed(EVAL), id="stale-Deploy/Running-Eval-Failed"),
    pytest.param(
        at(TRAIN, W, rounds_before=1), WorkerSucceeded(DEPLOY), id="stale-round2-resent-Deploy-Succeeded"
    ),
    pytest.param(at(TRAIN, W, rounds_before=1), EdgeReady(EVAL), id="stale-round2-late-Eval-EdgeReady"),
    pytest.param(
        at(TRAIN, W, rounds_before=1), StageSkipped(DEPLOY), id="stale-round2-resent-Deploy-Skipped"
    ),
    pytest.param(at(TRAIN, W, rounds_before=1), WorkerRunning(TRAIN), id="stale-round2-late-Train-Running"),
    pytest.param(
        [*at(TRAIN, S), cond(TRAIN, F), cond(TRAIN, W)], WorkerFailed(TRAIN), id="stale-resent-Train-Failed"
    ),
    pytest.param(
        [*at(EVAL, RUN), cond(EVAL, F), cond(TRAIN, W)], WorkerFailed(EVAL), id="stale-resent-Eval-Failed"
    ),
    pytest.param(
        [*at(TRAIN, S), cond(TRAIN, F), cond(TRAIN, W), cond(TRAIN, R)],
        WorkerSucceeded(TRAIN),
        id="stale-abandoned-attempt-Succeeded-in-Ready",
    ),
]


@pytest.mark.parametrize(("history", "event"), DUPLICATE_OR_STALE)
def test_duplicate_or_stale_event_appends_nothing(history: list[Condition], event: Event) -> None:
    assert transition(history, event, T0 + timedelta(hours=1)) == []


# --------------------------------------------------------------------------- illegal

ILLEGAL = [
    pytest.param([], WorkerRunning(TRAIN), "never applicable", id="none-WorkerRunning"),
    pytest.param(
        at(TRAIN, W), WorkerStarting(TRAIN), "only from the current Ready", id="Waiting-WorkerStarting"
    ),
    pytest.param(at(TRAIN, W), WorkerRunning(TRAIN), "never applicable", id="new-job-Train-Running"),
    pytest.param(at(TRAIN, W), WorkerSucceeded(TRAIN), "never applicable", id="new-job-Train-Succeeded"),
    pytest.param(at(TRAIN, W), WorkerFailed(TRAIN), "never applicable", id="new-job-Train-Failed"),
    pytest.param(at(TRAIN, W), EdgeReady(EVAL), "never applicable", id="new-job-Eval-EdgeReady"),
    pytest.param(at(TRAIN, RUN), WorkerSucceeded(DEPLOY), "never applicable", id="Deploy-never-reached"),
    pytest.param(at(EVAL, W), WorkerRunning(EVAL), "never applicable", id="Eval-never-started-Running"),
    pytest.param(at(TRAIN, W), StageSkipped(TRAIN), "cannot be skipped", id="skip-Train"),
    pytest.param(at(TRAIN, R), StageSkipped(TRAIN), "cannot be skipped", id="skip-Train-from-Ready"),
    pytest.param(at(TRAIN, R), WorkerStarting(EVAL), "only from the current Ready", id="start-other-stage"),
    pytest.param(
        at(TRAIN, RUN), WorkerStarting(TRAIN), "only from the current Ready", id="start-while-Running"
    ),
    pytest.param(
        at(TRAIN, W, rounds_before=1),
        WorkerStarting(TRAIN),
        "only from the current Ready",
        id="start-round2-Waiting",
    ),
]


@pytest.mark.parametrize(("history", "event", "why"), ILLEGAL)
def test_illegal_event_raises_state_error(history: list[Condition], event: Event, why: str) -> None:
    with pytest.raises(StateError, match=why):
        transition(history, event, T0)


# --------------------------------------------------------------------------- settling upstream histories


def test_history_ending_in_completed_is_settled_first() -> None:
    history = at(TRAIN, C)  # upstream's GM appends Completed and the next Waiting separately
    assert kinds(transition(history, Created(), T0)) == pairs((EVAL, W))
    assert kinds(transition(history, EdgeReady(EVAL), T0)) == pairs((EVAL, W), (EVAL, R))
    # A duplicate still yields only the settling condition, never a second Completed.
    assert kinds(transition(history, WorkerSucceeded(TRAIN), T0)) == pairs((EVAL, W))


def test_history_ending_in_failed_is_settled_with_backoff_from_the_failure_time() -> None:
    failed_at = "2024-05-01T11:00:00Z"
    history = [*at(TRAIN, RUN), Condition(type=F, stage=TRAIN, last_transition_time=failed_at)]
    (waiting,) = transition(history, Created(), T0)
    assert (waiting.stage, waiting.type, waiting.last_transition_time) == (TRAIN, W, T0S)
    assert json.loads(waiting.data) == {"retryAfter": "2024-05-01T11:00:10Z", "consecutiveFailures": 1}


# --------------------------------------------------------------------------- failures and backoff


@pytest.mark.parametrize(
    ("failures", "expected"),
    [
        pytest.param(-1, 0.0, id="negative"),
        pytest.param(0, 0.0, id="none"),
        pytest.param(1, 10.0, id="1"),
        pytest.param(2, 20.0, id="2"),
        pytest.param(3, 40.0, id="3"),
        pytest.param(6, 320.0, id="6"),
        pytest.param(7, 360.0, id="7-capped"),
        pytest.param(100, 360.0, id="100-capped"),
        pytest.param(10_000, 360.0, id="10000-no-overflow"),
    ],
)
def test_backoff_grows_exponentially_and_is_capped(failures: int, expected: float) -> None:
    assert backoff_seconds(failures) == expected


def test_backoff_defaults_and_custom_policy() -> None:
    assert (DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP) == (10.0, 360.0)
    assert [backoff_seconds(n, base=1, cap=5) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    with pytest.raises(ValueError, match="negative"):
        backoff_seconds(1, base=-1)


@given(st.integers(min_value=0, max_value=2000), st.floats(0, 1e6), st.floats(0, 1e9))
def test_backoff_is_monotonic_and_bounded(n: int, base: float, cap: float) -> None:
    assert backoff_seconds(n, base, cap) <= backoff_seconds(n + 1, base, cap) <= cap


def test_consecutive_failures_counts_since_the_last_full_round() -> None:
    assert consecutive_failures([]) == 0
    fail_train = [cond(TRAIN, S), cond(TRAIN, F), cond(TRAIN, W)]
    fail_eval = [*at(EVAL, RUN)[1:], cond(EVAL, F), cond(TRAIN, W)]  # Train succeeded, Eval failed
    assert consecutive_failures(fail_train) == 1
    assert consecutive_failures(fail_train + fail_train) == 2
    # A successful Train between failing Evals does not reset it: only a whole round does.
    assert consecutive_failures(fail_train + fail_eval + fail_eval) == 3
    assert consecutive_failures([*fail_train, *fail_eval, *ROUND_CONDS]) == 0
    assert consecutive_failures([*fail_train, *ROUND_CONDS, *fail_eval]) == 1


def _fail_train(history: list[Condition], now: datetime) -> list[Condition]:
    """Drive one attempt of Train that fails while Running, starting from Train/Waiting."""
    for event in (EdgeReady(TRAIN), WorkerStarting(TRAIN), WorkerRunning(TRAIN), WorkerFailed(TRAIN)):
        history = [*history, *transition(history, event, now)]
        now = now + timedelta(seconds=1)
    return history


def test_failure_appends_failed_then_train_waiting_with_growing_retry_after() -> None:
    history = transition([], Created(), T0)
    seen = []
    now = T0
    for _ in range(4):
        history = _fail_train(history, now)
        assert kinds(history[-2:]) == pairs((TRAIN, F), (TRAIN, W))
        data = json.loads(history[-1].data)
        failed_at = parse_time(history[-2].last_transition_time or "")
        seen.append(
            (data["consecutiveFailures"], (parse_time(data["retryAfter"]) - failed_at).total_seconds())
        )
        now = parse_time(data["retryAfter"])  # the GM waits exactly until retryAfter
    assert seen == [(1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0)]
    assert history[-1].reason == "TrainFailed"
    assert "retry after 80s" in history[-1].message


def test_custom_backoff_policy_reaches_the_condition() -> None:
    history = at(EVAL, RUN)
    _, waiting = transition(history, WorkerFailed(EVAL), T0, backoff_base=1, backoff_cap=2)
    assert json.loads(waiting.data)["retryAfter"] == format_time(T0 + timedelta(seconds=1))


def test_retry_after_holds_the_start_of_the_next_train_worker() -> None:
    history = _fail_train(transition([], Created(), T0), T0)  # fails at T0+3s
    due = parse_time(json.loads(history[-1].data)["retryAfter"])
    assert retry_after(history) == due

    # The LC may fire its trigger during the backoff; the report is kept.
    history += transition(history, EdgeReady(TRAIN), T0 + timedelta(seconds=4))
    assert retry_after(history) == due

    with pytest.raises(StateError, match="backing off"):
        transition(history, WorkerStarting(TRAIN), due - timedelta(seconds=1))
    started = transition(history, WorkerStarting(TRAIN), due)
    assert kinds(started) == pairs((TRAIN, S))
    assert retry_after([*history, *started]) is None


def test_retry_after_is_none_without_a_failure() -> None:
    assert retry_after([]) is None
    assert retry_after(at(TRAIN, W)) is None
    assert retry_after(at(TRAIN, R, rounds_before=1)) is None
    assert retry_after(at(EVAL, W)) is None
    garbled = [*at(TRAIN, S), cond(TRAIN, F), cond(TRAIN, W, data="{not json")]
    assert retry_after(garbled) is None


# --------------------------------------------------------------------------- queries


def test_current_is_the_last_condition() -> None:
    assert current([]) is None
    history = at(EVAL, S)
    assert current(history) is history[-1]
    assert (current(history).stage, current(history).type) == (EVAL, S)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        pytest.param([], 0, id="none"),
        pytest.param(at(TRAIN, W), 0, id="waiting-never-triggered"),
        pytest.param(at(TRAIN, R), 1, id="first-trigger"),
        pytest.param(at(DEPLOY, C), 1, id="through-deploy"),
        pytest.param(at(TRAIN, W, rounds_before=1), 1, id="waiting-after-round-1"),
        pytest.param(at(TRAIN, R, rounds_before=1), 2, id="second-trigger"),
        pytest.param(
            [*at(TRAIN, S), cond(TRAIN, F), cond(TRAIN, W), cond(TRAIN, R)], 2, id="failed-attempt-counts"
        ),
    ],
)
def test_current_round(history: list[Condition], expected: int) -> None:
    assert current_round(history) == expected


# --------------------------------------------------------------------------- a whole life


def test_two_rounds_driven_by_events() -> None:
    events: list[Event] = [Created()]
    for _ in range(2):
        for stage in Stage:
            events += [
                EdgeReady(stage),
                EdgeReady(stage),  # resent
                WorkerStarting(stage),
                WorkerRunning(stage),
                WorkerRunning(stage),  # resent
                WorkerSucceeded(stage),
                WorkerSucceeded(stage),  # resent after the stage moved on
            ]
    history: list[Condition] = []
    now = T0
    for event in events:
        history += transition(history, event, now)
        now += timedelta(seconds=1)
    one_round = [*ROUND[1:], (TRAIN, W)]  # Deploy/Completed is followed by Train/Waiting
    assert kinds(history) == pairs((TRAIN, W), *one_round, *one_round)
    assert current_round(history) == 2
    times = [c.last_transition_time or "" for c in history]
    assert times == sorted(times)


# --------------------------------------------------------------------------- the Condition value


def test_condition_dict_round_trip_uses_camel_case() -> None:
    c = Condition(
        type=R,
        stage=EVAL,
        reason="TriggerFired",
        message="reported by lc",
        data='{"input":{}}',
        last_transition_time=T0S,
        last_heartbeat_time=T0S,
    )
    d = c.to_dict()
    assert d == {
        "type": "Ready",
        "status": "True",
        "stage": "Eval",
        "lastHeartbeatTime": T0S,
        "lastTransitionTime": T0S,
        "reason": "TriggerFired",
        "message": "reported by lc",
        "data": '{"input":{}}',
    }
    assert Condition.from_dict(d) == c
    assert Condition.from_dict(json.loads(json.dumps(d))) == c


def test_condition_dict_omits_empty_fields_like_upstream() -> None:
    c = Condition(type=W, stage=TRAIN)
    assert c.to_dict() == {"type": "Waiting", "status": "True", "stage": "Train"}
    assert Condition.from_dict({"type": "Waiting", "stage": "Train", "extra": 1}) == c


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param({"stage": "Train"}, "type", id="missing-type"),
        pytest.param({"type": "Done", "stage": "Train"}, "type", id="unknown-type"),
        pytest.param({"type": "Waiting", "stage": "train"}, "stage", id="wrong-case-stage"),
        pytest.param({"type": "Waiting", "stage": "Train", "data": {"a": 1}}, "data", id="data-not-a-string"),
        pytest.param(
            {"type": "Waiting", "stage": "Train", "lastTransitionTime": 5}, "lastTransitionTime", id="time"
        ),
    ],
)
def test_condition_from_bad_dict_names_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Condition.from_dict(raw)
    assert info.value.path == field


def test_condition_is_immutable_and_coerces_plain_strings() -> None:
    c = Condition(type="Running", stage="Deploy")  # type: ignore[arg-type]
    assert (c.type, c.stage) == (RUN, DEPLOY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.reason = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        Condition(type="Paused", stage="Train")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        EdgeReady("Later")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- time


def test_now_may_be_a_string_or_any_aware_datetime() -> None:
    (a,) = transition([], Created(), "2024-05-01T14:00:00.123456+02:00")
    (b,) = transition([], Created(), T0.astimezone(timezone(timedelta(hours=-5))))
    assert a.last_transition_time == b.last_transition_time == T0S


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(datetime(2024, 5, 1, 12), id="naive-datetime"),
        pytest.param("yesterday", id="not-a-time"),
        pytest.param("2024-05-01T12:00:00", id="naive-string"),
    ],
)
def test_now_must_be_an_aware_time(bad: datetime | str) -> None:
    with pytest.raises(ValueError):
        transition([], Created(), bad)


# --------------------------------------------------------------------------- properties over random histories

STAGE_EVENTS = st.sampled_from(Stage).flatmap(
    lambda s: st.sampled_from(
        [
            EdgeReady(s),
            WorkerStarting(s),
            WorkerRunning(s),
            WorkerSucceeded(s),
            WorkerFailed(s),
            StageSkipped(s),
        ]
    )
)
LEGAL_STEPS = {
    (W, R),
    (R, S),
    (S, RUN),
    (S, C),
    (RUN, C),
    (S, F),
    (RUN, F),
    (W, C),
    (R, C),
}


@settings(max_examples=300, deadline=None)
@given(st.lists(STAGE_EVENTS, max_size=60))
def test_any_event_sequence_keeps_the_history_well_formed(events: list[Event]) -> None:
    """Whatever arrives, in whatever order: only legal steps are appended, never the same
    condition twice in a row, and re-applying an applied event appends nothing."""
    history = transition([], Created(), T0)
    now = T0
    for event in events:
        now += timedelta(hours=1)  # past any backoff
        try:
            out = transition(history, event, now)
        except StateError:
            continue
        if out:
            assert transition([*history, *out], event, now) == []
        history += out
    for prev, nxt in itertools.pairwise(history):
        assert (prev.stage, prev.type) != (nxt.stage, nxt.type)
        if prev.type is C:
            assert nxt.type is W
            assert nxt.stage is {TRAIN: EVAL, EVAL: DEPLOY, DEPLOY: TRAIN}[prev.stage]
        elif prev.type is F:
            assert (nxt.stage, nxt.type) == (TRAIN, W)
            assert json.loads(nxt.data)["consecutiveFailures"] >= 1
        else:
            assert prev.stage is nxt.stage
            assert (prev.type, nxt.type) in LEGAL_STEPS
    assert history[-1].type not in (C, F)
