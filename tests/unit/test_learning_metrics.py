"""The lifelong-learning metrics (``lifelong.learning.metrics``) on hand-made score matrices.

Each expected value is worked out by hand in the comments, from the definitions in the module's
docstring (docs/lifelong-learning.md explains them).
"""

from __future__ import annotations

import pytest

from lifelong.learning.metrics import (
    average_accuracy,
    bwt,
    first_rounds,
    forgetting,
    format_matrix,
    fwt,
    samples_transfer_ratio,
    summarize,
)

# Three tasks a, b, c; a and b are learned in round 0, c arrives in round 1.
#            a     b     c
R = [
    [0.90, 0.80, None],  # round 0
    [0.85, 0.90, 0.60],  # round 1
    [0.70, 0.85, 0.65],  # round 2 (T)
]
TASKS = ["a", "b", "c"]


def test_first_rounds_are_the_first_scored_rounds() -> None:
    assert first_rounds(R) == [0, 0, 1]
    assert first_rounds([[None, 0.5], [None, 0.6]]) == [None, 0]


def test_average_accuracy_is_the_mean_of_the_last_round() -> None:
    # (0.70 + 0.85 + 0.65) / 3 = 2.20 / 3 = 0.7333...
    assert average_accuracy(R) == pytest.approx(2.20 / 3)
    # round 0 skips the unseen c: (0.90 + 0.80) / 2 = 0.85
    assert average_accuracy(R, 0) == pytest.approx(0.85)


def test_bwt_is_the_mean_change_since_each_task_was_learned() -> None:
    # a: R[2][a] - R[0][a] = 0.70 - 0.90 = -0.20
    # b: R[2][b] - R[0][b] = 0.85 - 0.80 = +0.05
    # c: R[2][c] - R[1][c] = 0.65 - 0.60 = +0.05
    # mean: (-0.20 + 0.05 + 0.05) / 3 = -0.10 / 3 = -0.0333...
    assert bwt(R) == pytest.approx(-0.10 / 3)


def test_bwt_with_explicit_first_rounds() -> None:
    # b said to be learned in round 1: b's term is 0.85 - 0.90 = -0.05
    # (-0.20 - 0.05 + 0.05) / 3 = -0.20 / 3
    assert bwt(R, first=[0, 1, 1]) == pytest.approx(-0.20 / 3)


def test_fwt_compares_a_new_task_with_its_baseline_at_the_round_it_is_learned() -> None:
    # only c is learned after round 0: R[1][c] - baseline[c] = 0.60 - 0.50 = 0.10;
    # a and b (round 0, nothing to transfer from) do not count, whatever their baseline.
    assert fwt(R, [0.0, 0.0, 0.50]) == pytest.approx(0.10)
    # b learned in round 1 too: b 0.90 - 0.70 = 0.20, c 0.10; mean 0.15
    assert fwt(R, [0.5, 0.70, 0.50], first=[0, 1, 1]) == pytest.approx(0.15)
    # a baseline better than the system gives a negative FWT: 0.60 - 0.75 = -0.15
    assert fwt(R, [None, None, 0.75]) == pytest.approx(-0.15)


def test_forgetting_is_the_mean_largest_drop_never_below_zero() -> None:
    # a: max(0.90, 0.85) - 0.70 = 0.20
    # b: max(0.80, 0.90) - 0.85 = 0.05
    # c: max(0.60) - 0.65 = -0.05, counted as 0
    # mean: (0.20 + 0.05 + 0) / 3 = 0.0833...
    assert forgetting(R) == pytest.approx(0.25 / 3)


def test_no_forgetting_when_scores_only_rise() -> None:
    rising = [[0.5, None], [0.6, 0.4], [0.7, 0.9]]
    # a: max(0.5, 0.6) - 0.7 < 0 -> 0; b: max(0.4) - 0.9 < 0 -> 0
    assert forgetting(rising) == 0.0
    # a: 0.7 - 0.5 = 0.2; b: 0.9 - 0.4 = 0.5; mean 0.35
    assert bwt(rising) == pytest.approx(0.35)


def test_nothing_to_average_gives_none() -> None:
    one_round = [[0.9, 0.8]]
    assert bwt(one_round) is None
    assert forgetting(one_round) is None
    assert fwt(one_round, [0.5, 0.5]) is None  # every task is learned in round 0
    assert average_accuracy([[None, None]]) is None


def test_summarize_gathers_the_metrics() -> None:
    out = summarize(R, baseline=[0.0, 0.0, 0.5])
    assert out == {
        "average_accuracy": pytest.approx(2.20 / 3),
        "bwt": pytest.approx(-0.10 / 3),
        "fwt": pytest.approx(0.10),
        "forgetting": pytest.approx(0.25 / 3),
    }
    assert summarize(R)["fwt"] is None


def test_samples_transfer_ratio() -> None:
    # 50 of 200 inferred samples sent as unseen: 0.25
    assert samples_transfer_ratio(200, 50) == 0.25
    assert samples_transfer_ratio(0, 0) == 0.0
    with pytest.raises(ValueError, match="negative"):
        samples_transfer_ratio(-1, 0)


def test_format_matrix_is_a_text_table() -> None:
    # round averages: (0.90 + 0.80) / 2 = 0.850; (0.85 + 0.90 + 0.60) / 3 = 0.783; 0.733
    assert format_matrix(R, TASKS).splitlines() == [
        "             a      b      c  average",
        "round 0  0.900  0.800      -    0.850",
        "round 1  0.850  0.900  0.600    0.783",
        "round 2  0.700  0.850  0.650    0.733",
    ]
    assert format_matrix([[0.5]], ["x"], rounds=["r1"], digits=1).splitlines() == [
        "      x  average",
        "r1  0.5      0.5",
    ]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bwt([]), "no rounds"),
        (lambda: bwt([[0.5, 0.5], [0.5]]), "round 1 of the score matrix has 1 scores, round 0 has 2"),
        (lambda: fwt(R, [0.5]), "the baseline has 1 scores"),
        (lambda: bwt(R, first=[0, 0]), "first names 2 tasks"),
        (lambda: forgetting(R, first=[0, 0, 3]), r"first\[2\] = 3 is not a round"),
        (lambda: format_matrix(R, ["a"]), "1 task names"),
        (lambda: format_matrix(R, TASKS, rounds=["x"]), "1 round names"),
    ],
)
def test_bad_shapes_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
