"""The Sedna worker environment variables of each stage (pure): every variable that upstream
Sedna's GM sets, with its value, per stage (the table in docs/writing-workers.md)."""

from __future__ import annotations

import json
from pathlib import Path

from harness import lc_objects

from lifelong.cloud.controllers.lifelonglearning.workerenv import (
    DEFAULT_KB_SERVER,
    DEFAULT_LC_SERVER,
    cloud_kb_index,
    model_urls,
    worker_env,
)
from lifelong.common.api import Dataset, LifelongLearningJob, parse_resource
from lifelong.common.stages import ConditionType, Stage
from lifelong.common.statemachine import Condition


def _job(output_dir: str = "/out/") -> LifelongLearningJob:
    wire = lc_objects.job("j", "edge-1", "ds", Path("/out"), [])
    wire["metadata"]["namespace"] = "ns"
    wire["spec"]["outputDir"] = output_dir  # a trailing slash is not doubled
    parsed = parse_resource(wire)
    assert isinstance(parsed, LifelongLearningJob)
    return parsed


def _dataset() -> Dataset:
    parsed = parse_resource(lc_objects.dataset("ds", "edge-1", Path("/data/all.txt")))
    assert isinstance(parsed, Dataset)
    return parsed


JOB = _job()
DATASET = _dataset()


def c(stage: Stage, type_: ConditionType, data: object = None) -> Condition:
    return Condition(type=type_, stage=stage, data=json.dumps(data) if data is not None else "")


W, R, S, C, F = (ConditionType(t) for t in ("Waiting", "Ready", "Starting", "Completed", "Failed"))
T, E, D = Stage.TRAIN, Stage.EVAL, Stage.DEPLOY

ROUND = [
    c(T, W),
    c(T, R, {"trainDataURL": "/d/train.txt", "evalDataURL": "/d/eval.txt"}),
    c(T, S),
    c(T, C, {"models": [{"url": "/m/1.pkl"}]}),
    c(E, W),
]
FULL_ROUND = [
    *ROUND,
    c(E, R, {"models": [{"url": "/m/1.pkl"}]}),
    c(E, S),
    c(E, C, {"models": [{"url": "/m/1.pkl"}]}),
    c(D, W),
    c(D, R, {"model": {"url": "/out/deploy/1.pkl"}}),
    c(D, S),
    c(D, C),
    c(T, W),
]


def test_first_train_env_is_upstreams_whole_set() -> None:
    env = worker_env(JOB, T, 1, ROUND[:3], DATASET, lc_server="http://lc:9100", kb_server="http://kb")
    assert env == {
        "NAMESPACE": "ns",
        "JOB_NAME": "j",
        "WORKER_NAME": "j-train-1",
        "LC_SERVER": "http://lc:9100",
        "KB_SERVER": "http://kb",
        "HAS_COMPLETED_INITIAL_TRAINING": "false",
        "OUTPUT_URL": "/out/train/1",
        "ORIGINAL_DATASET_URL": "/data/all.txt",
        "TRAIN_DATASET_URL": "/d/train.txt",
        "TEST_DATASET_URL": "/d/eval.txt",
    }
    assert "CLOUD_KB_INDEX" not in env  # upstream sets it only after an initial training


def test_later_train_has_completed_initial_training_and_the_cloud_kb_index() -> None:
    round2 = [*FULL_ROUND, c(T, R, {"trainDataURL": "/d/train2.txt", "evalDataURL": "/d/eval2.txt"}), c(T, S)]
    env = worker_env(JOB, T, 2, round2, DATASET)
    assert env["HAS_COMPLETED_INITIAL_TRAINING"] == "true"
    assert env["CLOUD_KB_INDEX"] == "/m/1.pkl"  # the latest Train/Completed's first model
    assert env["OUTPUT_URL"] == "/out/train/2"
    assert env["TRAIN_DATASET_URL"] == "/d/train2.txt" and env["TEST_DATASET_URL"] == "/d/eval2.txt"
    assert env["WORKER_NAME"] == "j-train-2"


def test_train_after_a_failed_train_has_not_completed_initial_training() -> None:
    failed = [*ROUND[:3], c(T, F), c(T, W), c(T, R, {"trainDataURL": "/d/t.txt"}), c(T, S)]
    env = worker_env(JOB, T, 2, failed, DATASET)
    assert env["HAS_COMPLETED_INITIAL_TRAINING"] == "false"
    assert "CLOUD_KB_INDEX" not in env


def test_cloud_kb_index_is_the_latest_train_output_that_names_a_model() -> None:
    history = [
        c(T, C, {"models": [{"url": "/m/old.pkl"}]}),
        c(T, C, {"output": {"models": [{"url": "/m/upstream.pkl"}, {"url": "/m/b.pkl"}]}}),
        c(E, C, {"models": [{"url": "/m/eval.pkl"}]}),
    ]
    assert cloud_kb_index(history) == "/m/upstream.pkl"
    assert cloud_kb_index([*history, c(T, C, {"models": []})]) == "/m/upstream.pkl"
    assert cloud_kb_index([c(T, C)]) == ""
    # Completed but no model named anywhere: upstream still sets the variable, empty.
    env = worker_env(JOB, T, 2, [c(T, R), c(T, S), c(T, C), c(T, R), c(T, S)], DATASET)
    assert env["HAS_COMPLETED_INITIAL_TRAINING"] == "true" and env["CLOUD_KB_INDEX"] == ""


def test_eval_env_is_upstreams_set() -> None:
    ready = [*ROUND, c(E, R, {"models": [{"url": "/m/a"}, {"url": "/m/b"}]})]
    env = worker_env(JOB, E, 1, ready, DATASET, lc_server="http://lc:9100", kb_server="http://kb")
    assert env == {
        "NAMESPACE": "ns",
        "JOB_NAME": "j",
        "WORKER_NAME": "j-eval-1",
        "LC_SERVER": "http://lc:9100",
        "KB_SERVER": "http://kb",
        "MODEL_URLS": "/m/a,/m/b",
        "OUTPUT_URL": "/out/eval/1",
        "TEST_DATASET_URL": "/d/eval.txt",
        "ORIGINAL_DATASET_URL": "/data/all.txt",
    }


def test_eval_env_takes_the_train_output_when_ready_names_no_models() -> None:
    env = worker_env(JOB, E, 1, [*ROUND, c(E, R)], DATASET)
    assert env["MODEL_URLS"] == "/m/1.pkl"


def test_deploy_env_is_upstreams_inference_set_and_the_kb_server() -> None:
    ready = [*ROUND, c(D, R, {"model": {"url": "/out/deploy/m.pkl"}})]
    env = worker_env(JOB, D, 1, ready, None, lc_server="http://lc:9100", kb_server="http://kb")
    assert env == {
        "NAMESPACE": "ns",
        "JOB_NAME": "j",
        "WORKER_NAME": "j-deploy-1",
        "LC_SERVER": "http://lc:9100",
        "KB_SERVER": "http://kb",  # lifelong's addition: the library reads the task index there
        "MODEL_URLS": "/out/deploy/m.pkl",
        "OUTPUT_URL": "/out/",  # upstream gives the job's outputDir as written
    }
    assert worker_env(JOB, D, 1, [], None)["MODEL_URLS"] == "/out/deploy/index.pkl"


def test_upstream_shaped_ready_inputs_give_the_same_values() -> None:
    """A history written by upstream's LC: Ready data is ``{"input": {...}}``."""
    train_ready = {
        "input": {"dataURL": "/u/train.txt", "dataIndexURL": "/u/index.txt", "outputDir": "/u/t/1"}
    }
    env = worker_env(JOB, T, 1, [c(T, W), c(T, R, train_ready), c(T, S)], DATASET)
    assert env["TRAIN_DATASET_URL"] == "/u/train.txt"
    assert env["ORIGINAL_DATASET_URL"] == "/u/index.txt"
    assert env["OUTPUT_URL"] == "/u/t/1"
    eval_ready = {"input": {"models": [{"url": "/u/m.pkl"}], "dataURL": "/u/eval.txt", "outputDir": "/u/e/1"}}
    history = [c(T, R, train_ready), c(T, S), c(T, C), c(E, W), c(E, R, eval_ready), c(E, S)]
    env = worker_env(JOB, E, 1, history, DATASET)
    assert env["MODEL_URLS"] == "/u/m.pkl"
    assert env["TEST_DATASET_URL"] == "/u/eval.txt"
    assert env["OUTPUT_URL"] == "/u/e/1"


def test_defaults_are_upstreams() -> None:
    env = worker_env(JOB, E, 1, ROUND, DATASET)
    assert env["LC_SERVER"] == DEFAULT_LC_SERVER == "http://127.0.0.1:9100"
    assert env["KB_SERVER"] == DEFAULT_KB_SERVER == "http://localhost:9020"


def test_every_stage_gets_the_same_kb_server() -> None:
    """The library sends ``KB_TOKEN`` only to ``KB_SERVER``: a Deploy worker without it could not
    read the task index of a KB that takes tokens."""
    history = [*ROUND, c(D, R, {"model": {"url": "/out/deploy/m.pkl"}})]
    for stage in (T, E, D):
        env = worker_env(JOB, stage, 1, history, DATASET, kb_server="https://kb.example:9020")
        assert env["KB_SERVER"] == "https://kb.example:9020", (stage, env)
    assert worker_env(JOB, D, 1, [], None)["KB_SERVER"] == DEFAULT_KB_SERVER


def test_model_urls_shapes() -> None:
    assert model_urls("/a") == ["/a"]
    assert model_urls({"models": [{"url": "/a"}, "/b", {"nourl": 1}]}) == ["/a", "/b"]
    assert model_urls({"output": {"models": [{"url": "/c"}]}}) == ["/c"]
    assert model_urls({"output": 1}) == []
    assert model_urls(None) == []
