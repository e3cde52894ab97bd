"""The Sedna worker environment variables of one stage's worker. Pure; no I/O.

Who calls it: the lifelong-learning controller, when it starts a stage's worker (either runtime).
Names and values follow upstream Sedna's lifelong-learning GM (its ``createPod`` and
``createInferPod``), so Sedna-library workers run unchanged. ``docs/writing-workers.md`` has the
table; in short:

=================  =====================================================================
all stages         ``NAMESPACE``, ``JOB_NAME``, ``WORKER_NAME``, ``LC_SERVER``, ``KB_SERVER``
                   (lifelong adds it for Deploy, which upstream gives none: the library reads
                   the task index from it and sends ``KB_TOKEN`` to that server only)
Train              ``HAS_COMPLETED_INITIAL_TRAINING`` (``true`` once any Train/Completed is in
                   the history), ``CLOUD_KB_INDEX`` (only then: the first model URL of the
                   latest Train/Completed that names one, else empty),
                   ``OUTPUT_URL`` (``{outputDir}/train/{round}``), ``TRAIN_DATASET_URL``
                   (the Ready report's ``trainDataURL``), ``ORIGINAL_DATASET_URL`` (the
                   Dataset's ``spec.url``); lifelong adds ``TEST_DATASET_URL`` (the round's
                   ``evalDataURL``), which upstream gives Eval only
Eval               ``MODEL_URLS`` (comma-separated, the Ready report's
                   ``models``, else the round's Train output), ``OUTPUT_URL``
                   (``{outputDir}/eval/{round}``), ``TEST_DATASET_URL`` (the round's
                   ``evalDataURL``), ``ORIGINAL_DATASET_URL``
Deploy             ``MODEL_URLS`` (the Ready report's ``model``, else the Eval/Train output,
                   else ``{outputDir}/deploy/index.pkl`` as upstream), ``OUTPUT_URL``
                   (``outputDir`` itself, as upstream)
=================  =====================================================================

A Ready condition written by upstream's LC carries its inputs as ``{"input": {"dataURL",
"dataIndexURL", "outputDir", "models"}}``; those are read too, so a history imported from Sedna
gives the same values. ``WORKER_NAME`` is the Worker's name (``{job}-{stage}-{round}``), where
upstream draws a random ``train-worker-xxxxx``: workers only echo it back in the worker API's URL.

Credentials are never put here: workers get them from the LC, not from the job object.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lifelong.common.api import Dataset, LifelongLearningJob
from lifelong.common.stages import ConditionType, Stage
from lifelong.common.statemachine import Condition

DEFAULT_LC_SERVER = "http://127.0.0.1:9100"
DEFAULT_KB_SERVER = "http://localhost:9020"
"""Upstream Sedna GM's default ``knowledgeBaseServer.server``. Nothing of lifelong listens there."""


def _data(cond: Condition | None) -> dict[str, Any]:
    if cond is None or not cond.data:
        return {}
    try:
        value = json.loads(cond.data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _input(data: dict[str, Any]) -> dict[str, Any]:
    """Upstream's ``input`` object of a Ready condition's data (empty when absent)."""
    value = data.get("input")
    return value if isinstance(value, dict) else {}


def _text(*candidates: Any) -> str:
    """The first candidate that is a non-empty string, else ``""``."""
    for value in candidates:
        if isinstance(value, str) and value:
            return value
    return ""


def _last(conds: Sequence[Condition], stage: Stage, type_: ConditionType) -> Condition | None:
    for cond in reversed(conds):
        if cond.stage is stage and cond.type is type_:
            return cond
    return None


def _round_slice(conds: Sequence[Condition]) -> Sequence[Condition]:
    """The conditions since this round's Train/Ready."""
    for i in range(len(conds) - 1, -1, -1):
        if conds[i].stage is Stage.TRAIN and conds[i].type is ConditionType.READY:
            return conds[i:]
    return conds


def model_urls(value: Any) -> list[str]:
    """URLs from a model, a list of models, ``{"models": [...]}``, upstream's
    ``{"output": {"models": [...]}}`` or plain strings."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, dict):
        if "models" in value:
            return model_urls(value["models"])
        if "model" in value:
            return model_urls(value["model"])
        if isinstance(value.get("output"), dict):
            return model_urls(value["output"])
        url = value.get("url")
        return [url] if isinstance(url, str) and url else []
    if isinstance(value, list):
        out: list[str] = []
        for item in value:
            out.extend(model_urls(item))
        return out
    return []


def has_completed_initial_training(conditions: Sequence[Condition]) -> bool:
    """Upstream's test: any ``Train/Completed`` in the job's whole history."""
    return any(c.stage is Stage.TRAIN and c.type is ConditionType.COMPLETED for c in conditions)


def cloud_kb_index(conditions: Sequence[Condition]) -> str:
    """Upstream's ``CLOUD_KB_INDEX``: the first model URL of the latest ``Train/Completed`` that
    names a model (earlier ones are looked at when the latest names none), else ``""``."""
    for cond in reversed(conditions):
        if cond.stage is Stage.TRAIN and cond.type is ConditionType.COMPLETED:
            urls = model_urls(_data(cond))
            if urls:
                return urls[0]
    return ""


def worker_env(
    job: LifelongLearningJob,
    stage: Stage,
    round_: int,
    conditions: Sequence[Condition],
    dataset: Dataset | None,
    *,
    lc_server: str = DEFAULT_LC_SERVER,
    kb_server: str = DEFAULT_KB_SERVER,
) -> dict[str, str]:
    """The environment of ``job``'s ``stage`` worker in round ``round_``, from the job's
    ``conditions`` (its whole history: the Ready and Completed reports' data) and its Dataset
    (None: not found)."""
    name = job.name
    output_dir = job.spec.output_dir.rstrip("/")
    env = {
        "NAMESPACE": job.namespace,
        "JOB_NAME": name,
        "WORKER_NAME": f"{name}-{stage.value.lower()}-{round_}",
        "LC_SERVER": lc_server,
        "KB_SERVER": kb_server,
    }
    this_round = _round_slice(conditions)
    train_ready = _data(_last(this_round, Stage.TRAIN, ConditionType.READY))
    ready = _data(_last(this_round, stage, ConditionType.READY))
    inputs = _input(ready)
    if stage is Stage.DEPLOY:
        env["OUTPUT_URL"] = job.spec.output_dir
        urls = (
            model_urls(ready.get("model"))
            or model_urls(ready.get("models"))
            or model_urls(_data(_last(this_round, Stage.EVAL, ConditionType.COMPLETED)))
            or model_urls(_data(_last(this_round, Stage.TRAIN, ConditionType.COMPLETED)))
            or [f"{output_dir}/deploy/index.pkl"]
        )
        env["MODEL_URLS"] = ",".join(urls)
        return env
    env["OUTPUT_URL"] = _text(inputs.get("outputDir")) or f"{output_dir}/{stage.value.lower()}/{round_}"
    original = _text(inputs.get("dataIndexURL"), dataset.spec.url if dataset is not None else "")
    if original:
        env["ORIGINAL_DATASET_URL"] = original
    train_inputs = _input(train_ready)
    if stage is Stage.TRAIN:
        completed = has_completed_initial_training(conditions)
        env["HAS_COMPLETED_INITIAL_TRAINING"] = "true" if completed else "false"
        if completed:
            env["CLOUD_KB_INDEX"] = cloud_kb_index(conditions)
        env["TRAIN_DATASET_URL"] = _text(
            train_ready.get("trainDataURL"),
            train_inputs.get("dataURL"),
            dataset.spec.url if dataset is not None else "",
        )
        eval_data = _text(train_ready.get("evalDataURL"))
        if eval_data:
            env["TEST_DATASET_URL"] = eval_data
        return env
    urls = (
        model_urls(ready.get("models"))
        or model_urls(inputs.get("models"))
        or model_urls(_data(_last(this_round, Stage.TRAIN, ConditionType.COMPLETED)))
    )
    env["MODEL_URLS"] = ",".join(urls)
    test_data = _text(inputs.get("dataURL"), train_ready.get("evalDataURL"))
    if test_data:
        env["TEST_DATASET_URL"] = test_data
    return env
