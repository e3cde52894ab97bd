"""``LifelongLearning.update`` (through ``train`` once ``HAS_COMPLETED_INITIAL_TRAINING`` is true):
known tasks keep what they learnt, a new task is created and starts from the known task group
whose model scores best on its first labelled samples; and ``evaluate``'s scores and drops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier
from unit.test_learning_data import PARTS, X, Y, dd, latest_index, source, worker_env

from lifelong.learning import EstimatorAdapter, LifelongLearning, parse_index

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

BY_DOMAIN = {"method": "TaskDefinitionByDataAttr", "param": {"attribute": ["domain"]}}


def mlp() -> MLPClassifier:
    return MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0)


def first_round(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    kb = worker_env(monkeypatch, tmp_path)
    LifelongLearning(mlp(), task_definition=BY_DOMAIN).train(source({"cam_a": PARTS[0], "cam_b": PARTS[1]}))
    return kb


def second_round(monkeypatch: pytest.MonkeyPatch, kb: Path, data) -> dict:
    monkeypatch.setenv("HAS_COMPLETED_INITIAL_TRAINING", "true")
    monkeypatch.setenv("CLOUD_KB_INDEX", str(latest_index(kb)))
    monkeypatch.setenv("WORKER_NAME", "digits-train-2")
    out = LifelongLearning(mlp(), task_definition=BY_DOMAIN).train(data)
    assert isinstance(out, dict)
    return out


def accuracy(index_path: Path, data, monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setenv("MODEL_URLS", str(index_path))
    res, _, _ = LifelongLearning(mlp(), task_definition=BY_DOMAIN).inference(
        data, unseen_sample_postprocess=lambda s: None
    )
    return float(np.mean(res.astype(int) == data.y))


def test_update_keeps_old_tasks_and_creates_the_new_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kb = first_round(monkeypatch, tmp_path)
    old_tests = source({"cam_a": PARTS[3][:150], "cam_b": PARTS[3][150:300]})
    before = accuracy(latest_index(kb), old_tests, monkeypatch)
    # round 2's pool: only new samples, of cam_b (known) and cam_c (new)
    second_round(monkeypatch, kb, source({"cam_b": PARTS[2][:100], "cam_c": PARTS[2][100:300]}, seed=1))
    index = parse_index(latest_index(kb).read_bytes())
    groups = {g.entry: g for g in index.seen_task.task_groups}
    assert sorted(groups) == ["cam-a", "cam-b", "cam-c"]
    assert index.round == 2
    assert index.seen_task.extractor is not None and index.seen_task.extractor.map["cam-c"] == "cam-c"
    assert groups["cam-a"].samples == len(PARTS[0])  # untouched
    assert groups["cam-b"].samples == len(PARTS[1]) + 100  # old and new samples
    assert groups["cam-c"].samples == 200 and groups["cam-c"].tasks[0].attrs == {"domain": "cam_c"}
    after = accuracy(latest_index(kb), old_tests, monkeypatch)
    assert after >= before - 0.02, (before, after)  # no forgetting
    new = source({"cam_c": PARTS[3][300:450]}, seed=2)
    assert accuracy(latest_index(kb), new, monkeypatch) > 0.8


def test_transfer_picks_the_closest_task_records_the_ratio_and_beats_from_scratch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kb = first_round(monkeypatch, tmp_path)
    few = PARTS[2][:40]
    second_round(monkeypatch, kb, source({"cam_c": few}, seed=1))
    index = parse_index(latest_index(kb).read_bytes())
    cam_c = next(g for g in index.seen_task.task_groups if g.entry == "cam-c")
    assert cam_c.transfer is not None and cam_c.transfer.source == "cam-b"
    # the ratio is the cam-b model's score on cam_c's first labelled samples
    monkeypatch.setenv("MODEL_URLS", str(latest_index(kb)))
    cam_b = LifelongLearning(mlp(), task_definition=BY_DOMAIN).load().model("cam-b")
    assert cam_b is not None
    first = dd.view("cam_c", X[few], 1)[:20]
    assert cam_c.transfer.ratio == pytest.approx(cam_b.adapter.score(first, Y[few][:20]), abs=1e-4)
    assert (
        json.loads(latest_index(kb).read_text())["seen_task"]["task_groups"][2]["transfer"]["from"] == "cam-b"
    )
    test = source({"cam_c": PARTS[3][:300]}, seed=2)
    transferred = accuracy(latest_index(kb), test, monkeypatch)
    scratch = EstimatorAdapter(mlp())
    scratch.fit(dd.view("cam_c", X[few], 1), Y[few])
    from_scratch = scratch.score(test.x, test.y)
    assert transferred > from_scratch + 0.05, (transferred, from_scratch)


def test_evaluate_posts_scores_and_drops_tasks_that_fail_the_threshold(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kb = first_round(monkeypatch, tmp_path)
    # cam_b's test samples carry wrong labels: its model scores low there
    data = source({"cam_a": PARTS[3][:100], "cam_b": PARTS[3][100:200]})
    data.y = np.concatenate([data.y[:100], (data.y[100:] + 1) % 10])
    monkeypatch.setenv("MODEL_URLS", str(latest_index(kb)))
    monkeypatch.setenv("WORKER_NAME", "digits-eval-1")
    monkeypatch.setenv("model_threshold", "0.5")
    overall = LifelongLearning(mlp(), task_definition=BY_DOMAIN).evaluate(data)
    assert set(overall) == {"accuracy"}
    metrics = json.loads((kb / "metrics" / "default" / "digits.json").read_text())["scores"]["1"]
    assert metrics["cam-a"]["accuracy"] > 0.9 and metrics["cam-b"]["accuracy"] < 0.5
    index = parse_index(latest_index(kb).read_bytes())
    assert {g.entry: g.deployed for g in index.seen_task.task_groups} == {"cam-a": True, "cam-b": False}
    # a dropped group is not served: its samples are unseen
    monkeypatch.setenv("MODEL_URLS", str(latest_index(kb)))
    probe = source({"cam_a": PARTS[3][:2], "cam_b": PARTS[3][2:4]}, labelled=False)
    assert LifelongLearning(mlp(), task_definition=BY_DOMAIN).inference(
        probe, unseen_sample_postprocess=lambda s: None
    )[1] == [False, False, True, True]
