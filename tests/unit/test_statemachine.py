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
    DEFAULT_RETRY_LIMIT,
    MAX_RETRY_LIMIT,
    REASON_RETRY,
    Condition,
    Created,
    EdgeReady,
    Event,
    StageSkipped,
    WorkerFailed,
    WorkerRunning,
    WorkerStarting,
    WorkerSucceeded,
    attempt,
    backoff_seconds,
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
            at(st_, S), WorkerFailed(st_), pairs((st_, F), (st_, R)), id=f"{st_}/Starting-Failed->retry"
        )
        for st_ in Stage
    ],
    *[
        pytest.param(
            at(st_, RUN), WorkerFailed(st_), pairs((st_, F), (st_, R)), id=f"{st_}/Running-Failed->retry"
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
    # while a retry waits (its Ready of reason Retry is the current condition)
    *[
        pytest.param(
            [*at(ev.stage, RUN), cond(ev.stage, F), cond(ev.stage, R, reason=REASON_RETRY)], ev, id=why
        )
        for ev, why in (
            (WorkerFailed(TRAIN), "stale-resent-Train-Failed-while-its-retry-waits"),
            (EdgeReady(TRAIN), "trigger-during-a-retry-is-no-new-round"),
            (WorkerRunning(EVAL), "stale-Eval-Running-of-the-failed-attempt"),
        )
    ],
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


def test_history_ending_in_failed_is_settled_with_a_retry_backing_off_from_the_failure_time() -> None:
    failed_at = "2024-05-01T11:00:00Z"
    history = [*at(TRAIN, RUN), Condition(type=F, stage=TRAIN, last_transition_time=failed_at)]
    (retry,) = transition(history, Created(), T0)
    assert (retry.stage, retry.type, retry.reason, retry.last_transition_time) == (TRAIN, R, "Retry", T0S)
    assert json.loads(retry.data) == {"retryAfter": "2024-05-01T11:00:10Z", "attempt": 2, "maxAttempts": 7}


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


def test_attempt_counts_the_retries_since_the_stage_s_last_ready() -> None:
    retry = cond(TRAIN, R, reason=REASON_RETRY)
    assert attempt([], TRAIN) == 1
    assert attempt(at(TRAIN, R), TRAIN) == 1
    assert attempt([*at(TRAIN, RUN), cond(TRAIN, F), retry], TRAIN) == 2
    assert (
        attempt([*at(TRAIN, RUN), cond(TRAIN, F), retry, cond(TRAIN, S), cond(TRAIN, F), retry], TRAIN) == 3
    )
    # Another stage's retries do not count, and a new round's Ready starts over.
    eval_retry = [*at(EVAL, RUN), cond(EVAL, F), cond(EVAL, R, reason=REASON_RETRY)]
    assert (attempt(eval_retry, EVAL), attempt(eval_retry, TRAIN)) == (2, 1)
    assert attempt([*at(TRAIN, RUN), cond(TRAIN, F), retry, *ROUND_CONDS], TRAIN) == 1


TRAIN_DATA = {"trainDataURL": "/out/data/train/1/train.csv", "evalDataURL": "/out/data/eval/1/eval.csv"}


def _attempt(
    history: list[Condition], stage: Stage, now: datetime, *, ok: bool = False, **policy: float
) -> list[Condition]:
    """Start the worker of the current Ready of ``stage`` at ``now``; it runs and fails (or succeeds)."""
    end = WorkerSucceeded(stage) if ok else WorkerFailed(stage, message="worker x: exit code 3")
    for event in (WorkerStarting(stage), WorkerRunning(stage), end):
        history = [*history, *transition(history, event, now, **policy)]  # type: ignore[arg-type]
        now = now + timedelta(seconds=1)
    return history


def test_a_failed_train_is_retried_on_the_same_data_with_growing_backoff_until_the_limit() -> None:
    history = transition([], Created(), T0)
    history += transition(history, EdgeReady(TRAIN, data=json.dumps(TRAIN_DATA)), T0)
    now = T0
    seen = []
    for _ in range(DEFAULT_RETRY_LIMIT):
        history = _attempt(history, TRAIN, now)
        assert kinds(history[-2:]) == pairs((TRAIN, F), (TRAIN, R))
        retry = history[-1]
        data = json.loads(retry.data)
        assert retry.reason == REASON_RETRY
        assert {k: data[k] for k in TRAIN_DATA} == TRAIN_DATA  # the same data as the failed attempt
        failed_at = parse_time(history[-2].last_transition_time or "")
        seen.append((data["attempt"], (parse_time(data["retryAfter"]) - failed_at).total_seconds()))
        assert data["maxAttempts"] == DEFAULT_RETRY_LIMIT + 1
        assert current_round(history) == 1  # a retry is the same round
        assert attempt(history, TRAIN) == data["attempt"]
        now = parse_time(data["retryAfter"])  # the GM waits exactly until retryAfter
    assert seen == [(2, 10.0), (3, 20.0), (4, 40.0), (5, 80.0), (6, 160.0), (7, 320.0)]
    # The last attempt fails: the round is given up and Train waits for its trigger again.
    history = _attempt(history, TRAIN, now)
    assert kinds(history[-2:]) == pairs((TRAIN, F), (TRAIN, W))
    assert (history[-1].reason, history[-1].data) == ("TrainFailed", "")
    assert history[-1].message == (
        "Train attempt 7 of 7 failed, the last one: round 1 is given up and the next round starts "
        "when the Train trigger fires on new samples"
    )
    assert retry_after(history) is None
    # The next trigger starts round 2 at its first attempt.
    history += transition(history, EdgeReady(TRAIN), now)
    assert (current_round(history), attempt(history, TRAIN)) == (2, 1)


def test_the_retry_message_says_when_which_attempt_the_limit_and_what_follows() -> None:
    history = [*at(TRAIN, RUN)]
    history += transition(history, WorkerFailed(TRAIN), T0, backoff_base=5, retry_limit=2)
    assert history[-1].message == (
        "Train attempt 1 of 3 failed; attempt 2 starts at 2024-05-01T12:00:05Z (after a 5s backoff) "
        "on the same data, in round 1; after 3 failed attempts round 1 is given up and the next round "
        "starts when the Train trigger fires on new samples"
    )
    history = _attempt(history, TRAIN, T0 + timedelta(seconds=5), backoff_base=5, retry_limit=2)
    assert history[-1].message == (
        "Train attempt 2 of 3 failed; attempt 3 starts at 2024-05-01T12:00:17Z (after a 10s backoff) "
        "on the same data, in round 1; if it fails too, round 1 is given up and the next round starts "
        "when the Train trigger fires on new samples"
    )


@pytest.mark.parametrize("stage", [EVAL, DEPLOY])
def test_a_failed_eval_or_deploy_retries_its_own_stage_with_its_inputs(stage: Stage) -> None:
    inputs = {"models": [{"url": "/out/1/train/model.pkl"}]}
    history = [*at(stage, W), *transition(at(stage, W), EdgeReady(stage, data=json.dumps(inputs)), T0)]
    history = _attempt(history, stage, T0)
    assert kinds(history[-2:]) == pairs((stage, F), (stage, R))
    assert json.loads(history[-1].data)["models"] == inputs["models"]
    history = _attempt(history, stage, parse_time(json.loads(history[-1].data)["retryAfter"]), ok=True)
    nxt = {EVAL: DEPLOY, DEPLOY: TRAIN}[stage]
    assert kinds(history[-2:]) == pairs((stage, C), (nxt, W))
    assert current_round(history) == 1


def test_custom_backoff_and_retry_limit_reach_the_condition() -> None:
    history = at(EVAL, RUN)
    _, retry = transition(history, WorkerFailed(EVAL), T0, backoff_base=1, backoff_cap=2)
    assert json.loads(retry.data)["retryAfter"] == format_time(T0 + timedelta(seconds=1))
    # A limit above MAX_RETRY_LIMIT is taken as that (the worker names leave room for 3 digits).
    _, retry = transition(history, WorkerFailed(EVAL), T0, retry_limit=10**6)
    assert json.loads(retry.data)["maxAttempts"] == MAX_RETRY_LIMIT + 1
    # No retries: the first failure gives the round up.
    _, waiting = transition(history, WorkerFailed(EVAL), T0, retry_limit=0)
    assert (waiting.stage, waiting.type, waiting.reason) == (TRAIN, W, "EvalFailed")
    assert "Eval attempt 1 of 1 failed, the last one" in waiting.message


def test_a_failure_that_ends_no_attempt_goes_back_to_train_waiting() -> None:
    # e.g. the GM's validation refused a new job: nothing ran, so nothing is retried
    history = [*at(TRAIN, W), Condition(type=F, stage=TRAIN, reason="DatasetNotFound")]
    (waiting,) = transition(history, Created(), T0)
    assert (waiting.stage, waiting.type, waiting.data) == (TRAIN, W, "")
    assert "nothing to retry" in waiting.message


def test_retry_after_holds_the_start_of_the_retried_worker() -> None:
    history = _attempt([*at(TRAIN, R)], TRAIN, T0)  # fails at T0+2s
    due = parse_time(json.loads(history[-1].data)["retryAfter"])
    assert due == T0 + timedelta(seconds=12)
    assert retry_after(history) == due
    with pytest.raises(StateError, match="backing off"):
        transition(history, WorkerStarting(TRAIN), due - timedelta(seconds=1))
    started = transition(history, WorkerStarting(TRAIN), due)
    assert kinds(started) == pairs((TRAIN, S))
    assert retry_after([*history, *started]) is None


def test_retry_after_is_none_without_a_pending_retry() -> None:
    assert retry_after([]) is None
    assert retry_after(at(TRAIN, W)) is None
    assert retry_after(at(TRAIN, R, rounds_before=1)) is None
    assert retry_after(at(EVAL, W)) is None
    garbled = [*at(TRAIN, S), cond(TRAIN, F), cond(TRAIN, R, reason=REASON_RETRY, data="{not json")]
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
            [*at(TRAIN, S), cond(TRAIN, F), cond(TRAIN, W), cond(TRAIN, R)], 2, id="given-up-round-counts"
        ),
        pytest.param(
            [*at(TRAIN, S), cond(TRAIN, F), cond(TRAIN, R, reason=REASON_RETRY)],
            1,
            id="a-retry-keeps-its-round",
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
            assert (nxt.stage, nxt.type) in ((TRAIN, W), (prev.stage, R))
            if nxt.type is R:
                assert nxt.reason == REASON_RETRY
                assert json.loads(nxt.data)["attempt"] >= 2
        else:
            assert prev.stage is nxt.stage
            assert (prev.type, nxt.type) in LEGAL_STEPS
    assert history[-1].type not in (C, F)
