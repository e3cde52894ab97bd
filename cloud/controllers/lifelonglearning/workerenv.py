"""The Sedna worker environment variables of one stage's worker. Pure; no I/O.

Who calls it: the lifelong-learning controller, when it starts a stage's worker (either runtime).
Names follow upstream Sedna's lifelong-learning GM, so Sedna-library workers run unchanged:

=================  =====================================================================
all stages         ``NAMESPACE``, ``JOB_NAME``, ``WORKER_NAME``, ``LC_SERVER``
Train, Eval        ``KB_SERVER``, ``OUTPUT_URL`` (``{outputDir}/{round}/{stage}``),
                   ``ORIGINAL_DATASET_URL`` (the Dataset's ``spec.url``)
Train              ``TRAIN_DATASET_URL`` (the Ready report's ``trainDataURL``, else the
                   dataset's URL), ``TEST_DATASET_URL`` (its ``evalDataURL``, if any)
Eval               ``MODEL_URLS`` (comma-separated, the Ready report's ``models``, else the
                   round's Train output), ``TEST_DATASET_URL`` (the round's ``evalDataURL``)
Deploy             ``MODEL_URLS`` (the Ready report's ``model``, else the Eval/Train output,
                   else ``{outputDir}/deploy/index.pkl`` as upstream)
=================  =====================================================================

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
DEFAULT_KB_SERVER = "http://127.0.0.1:9020"


def _data(cond: Condition | None) -> dict[str, Any]:
    if cond is None or not cond.data:
        return {}
    try:
        value = json.loads(cond.data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


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
    """URLs from a model, a list of models, ``{"models": [...]}`` or plain strings."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, dict):
        if "models" in value:
            return model_urls(value["models"])
        if "model" in value:
            return model_urls(value["model"])
        url = value.get("url")
        return [url] if isinstance(url, str) and url else []
    if isinstance(value, list):
        out: list[str] = []
        for item in value:
            out.extend(model_urls(item))
        return out
    return []


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
    ``conditions`` (the Ready and Completed reports' data) and its Dataset (None: not found)."""
    name = job.name
    output_dir = job.spec.output_dir.rstrip("/")
    dataset_url = dataset.spec.url if dataset is not None else ""
    env = {
        "NAMESPACE": job.namespace,
        "JOB_NAME": name,
        "WORKER_NAME": f"{name}-{stage.value.lower()}-{round_}",
        "LC_SERVER": lc_server,
    }
    this_round = _round_slice(conditions)
    train_ready = _data(_last(this_round, Stage.TRAIN, ConditionType.READY))
    ready = _data(_last(this_round, stage, ConditionType.READY))
    if stage is not Stage.DEPLOY:
        env["KB_SERVER"] = kb_server
        env["OUTPUT_URL"] = f"{output_dir}/{round_}/{stage.value.lower()}"
        if dataset_url:
            env["ORIGINAL_DATASET_URL"] = dataset_url
        eval_data = train_ready.get("evalDataURL")
        if isinstance(eval_data, str) and eval_data:
            env["TEST_DATASET_URL"] = eval_data
    if stage is Stage.TRAIN:
        train_data = train_ready.get("trainDataURL")
        env["TRAIN_DATASET_URL"] = train_data if isinstance(train_data, str) and train_data else dataset_url
    elif stage is Stage.EVAL:
        urls = model_urls(ready.get("models")) or model_urls(
            _data(_last(this_round, Stage.TRAIN, ConditionType.COMPLETED))
        )
        env["MODEL_URLS"] = ",".join(urls)
    else:
        urls = (
            model_urls(ready.get("model"))
            or model_urls(ready.get("models"))
            or model_urls(_data(_last(this_round, Stage.EVAL, ConditionType.COMPLETED)))
            or model_urls(_data(_last(this_round, Stage.TRAIN, ConditionType.COMPLETED)))
            or [f"{output_dir}/deploy/index.pkl"]
        )
        env["MODEL_URLS"] = ",".join(urls)
    return env
