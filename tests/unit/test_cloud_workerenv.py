"""The Sedna worker environment variables of each stage (pure)."""

from __future__ import annotations

import json
from pathlib import Path

from harness import lc_objects

from lifelong.cloud.controllers.lifelonglearning.workerenv import model_urls, worker_env
from lifelong.common.api import Dataset, LifelongLearningJob, parse_resource
from lifelong.common.stages import ConditionType, Stage
from lifelong.common.statemachine import Condition


def _job() -> LifelongLearningJob:
    wire = lc_objects.job("j", "edge-1", "ds", Path("/out"), [])
    wire["metadata"]["namespace"] = "ns"
    wire["spec"]["outputDir"] = "/out/"  # a trailing slash is not doubled
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


ROUND = [
    c(Stage.TRAIN, ConditionType.WAITING),
    c(Stage.TRAIN, ConditionType.READY, {"trainDataURL": "/d/train.txt", "evalDataURL": "/d/eval.txt"}),
    c(Stage.TRAIN, ConditionType.STARTING),
    c(Stage.TRAIN, ConditionType.COMPLETED, {"models": [{"url": "/m/1.pkl"}]}),
    c(Stage.EVAL, ConditionType.WAITING),
]


def test_train_env() -> None:
    env = worker_env(
        JOB, Stage.TRAIN, 1, ROUND[:3], DATASET, lc_server="http://lc:9100", kb_server="http://kb"
    )
    assert env == {
        "NAMESPACE": "ns",
        "JOB_NAME": "j",
        "WORKER_NAME": "j-train-1",
        "LC_SERVER": "http://lc:9100",
        "KB_SERVER": "http://kb",
        "OUTPUT_URL": "/out/1/train",
        "ORIGINAL_DATASET_URL": "/data/all.txt",
        "TEST_DATASET_URL": "/d/eval.txt",
        "TRAIN_DATASET_URL": "/d/train.txt",
    }


def test_eval_env_takes_the_ready_models_else_the_train_output() -> None:
    ready = [*ROUND, c(Stage.EVAL, ConditionType.READY, {"models": [{"url": "/m/a"}, {"url": "/m/b"}]})]
    assert worker_env(JOB, Stage.EVAL, 1, ready, DATASET)["MODEL_URLS"] == "/m/a,/m/b"
    bare = [*ROUND, c(Stage.EVAL, ConditionType.READY)]
    env = worker_env(JOB, Stage.EVAL, 1, bare, DATASET)
    assert env["MODEL_URLS"] == "/m/1.pkl"
    assert env["TEST_DATASET_URL"] == "/d/eval.txt"
    assert env["OUTPUT_URL"] == "/out/1/eval"


def test_deploy_env() -> None:
    ready = [*ROUND, c(Stage.DEPLOY, ConditionType.READY, {"model": {"url": "/deploy/m.pkl"}})]
    env = worker_env(JOB, Stage.DEPLOY, 1, ready, None)
    assert env["MODEL_URLS"] == "/deploy/m.pkl"
    assert "KB_SERVER" not in env and "OUTPUT_URL" not in env
    assert worker_env(JOB, Stage.DEPLOY, 1, [], None)["MODEL_URLS"] == "/out/deploy/index.pkl"


def test_model_urls_shapes() -> None:
    assert model_urls("/a") == ["/a"]
    assert model_urls({"models": [{"url": "/a"}, "/b", {"nourl": 1}]}) == ["/a", "/b"]
    assert model_urls({"output": 1}) == []
    assert model_urls(None) == []
