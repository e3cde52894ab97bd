"""The sedna.io/v1alpha1 models and the loader: upstream shapes, round trips, field-naming errors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lifelong.common.api import (
    CANONICAL_OPERATOR,
    MAX_JOB_NAME,
    Dataset,
    LifelongLearningJob,
    LLJobCondition,
    LLJobStatus,
    LLTimer,
    Model,
    Worker,
    WorkerTemplate,
    dataset_node,
    dump_resource,
    dump_yaml,
    format_path,
    is_dns1123_subdomain,
    load_documents,
    load_file,
    load_yaml,
    parse_keeping_spec,
    parse_resource,
    parse_stored,
    resource_key,
    template_env,
)
from lifelong.common.errors import ValidationError
from lifelong.common.stages import ConditionType, Stage

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "atcii"
DATASET_YAML = EXAMPLES / "dataset.yaml"
JOB_YAML = EXAMPLES / "lifelonglearningjob.yaml"


def job_mapping() -> dict[str, Any]:
    """The atcii LifelongLearningJob example as a plain mapping (a fresh copy each time)."""
    (doc,) = load_yaml(JOB_YAML.read_text())
    return doc  # type: ignore[no-any-return]


def errors_of(obj_or_text: dict[str, Any] | str) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        if isinstance(obj_or_text, str):
            load_documents(obj_or_text, source="input.yaml")
        else:
            parse_resource(obj_or_text)
    err = info.value
    # Never a pydantic or PyYAML object or message leaking out.
    assert type(err) is ValidationError
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    assert "pydantic" not in str(err) and "Traceback" not in str(err)
    assert all(isinstance(p, str) and isinstance(m, str) for p, m in err.errors)
    return err


def paths(err: ValidationError) -> list[str]:
    return [path for path, _ in err.errors]


def with_change(path: str, value: Any) -> dict[str, Any]:
    """The job example with the dotted ``path`` set to ``value`` (``...containers.0.image``)."""
    doc = job_mapping()
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


# ------------------------------------------------------------------ the atcii examples

SEDNA_SHAPE = Path(__file__).resolve().parents[1] / "fixtures" / "sedna_shape"


@pytest.mark.parametrize("name", ["dataset.yaml", "models.yaml", "lifelonglearningjob.yaml"])
def test_the_sedna_shaped_fixture_validates_and_round_trips_exactly(name: str) -> None:
    text = (SEDNA_SHAPE / name).read_text()
    originals = load_yaml(text)
    resources = load_documents(text)
    assert [r.KIND for r in resources] == [o["kind"] for o in originals]
    for original, res in zip(originals, resources, strict=True):
        expected = copy.deepcopy(original)
        expected["metadata"]["namespace"] = "default"
        assert dump_resource(res) == expected  # every field kept: args, workingDir, resources ...


def test_working_dir_must_be_a_string() -> None:
    err = errors_of(with_change("spec.trainSpec.template.spec.containers.0.workingDir", 5))
    assert paths(err) == ["spec.trainSpec.template.spec.containers[0].workingDir"]


def test_atcii_examples_validate_with_upstream_values() -> None:
    (dataset,) = load_file(DATASET_YAML)
    (job,) = load_file(JOB_YAML)
    assert isinstance(dataset, Dataset)
    assert dataset.spec.url == "/data/trainData.csv"
    assert dataset.spec.format == "csv"
    assert dataset.spec.node_name == "edge-node"
    assert isinstance(job, LifelongLearningJob)
    assert job.spec.dataset.name == dataset.name == "lifelong-dataset"
    assert job.spec.dataset.train_prob == 0.8
    trigger = job.spec.train_spec.trigger
    assert trigger.check_period_seconds == 60
    assert trigger.timer is not None
    assert (trigger.timer.start, trigger.timer.end) == ("02:00", "24:00")
    assert trigger.condition.operator == ">"
    assert trigger.condition.canonical_operator == "gt"
    assert trigger.condition.threshold == 500
    assert trigger.condition.metric == "num_of_samples"
    assert job.spec.output_dir == "/output"
    assert job.spec.node_names() == ["edge-node"]
    assert job.metadata.namespace == "default"
    assert job.status is None and job.last_condition is None and job.conditions == []


def test_unquoted_timer_is_read_as_a_string_not_a_base60_number() -> None:
    # Upstream writes `end: 24:00` unquoted; YAML 1.1 (PyYAML's default) reads that as 1440.
    assert yaml.safe_load("end: 24:00") == {"end": 1440}
    assert load_yaml("end: 24:00\nstart: 02:00\n") == [{"end": "24:00", "start": "02:00"}]


def test_yaml_is_read_the_kubernetes_way() -> None:
    (doc,) = load_yaml("a: 1e3\nb: =\nc: 2024-05-01T12:00:00Z\nd: 0x10\ne: .5\nf: yes\ng: ~\n")
    assert doc == {
        "a": 1000.0,
        "b": "=",
        "c": "2024-05-01T12:00:00Z",
        "d": 16,
        "e": 0.5,
        "f": True,
        "g": None,
    }


@pytest.mark.parametrize("path", [DATASET_YAML, JOB_YAML])
def test_example_round_trips(path: Path) -> None:
    (res,) = load_file(path)
    wire = dump_resource(res)
    assert parse_resource(wire) == res
    assert load_documents(json.dumps(wire)) == [res]
    assert load_documents(dump_yaml(res)) == [res]


@pytest.mark.parametrize("path", [DATASET_YAML, JOB_YAML])
def test_dump_equals_original_mapping_but_for_defaults(path: Path) -> None:
    (original,) = load_yaml(path.read_text())
    (res,) = load_documents(path.read_text())
    expected = copy.deepcopy(original)
    expected["metadata"]["namespace"] = "default"  # the only default the examples leave out
    assert dump_resource(res) == expected


def test_pod_template_with_unknown_nested_fields_round_trips_exactly() -> None:
    template = {
        "metadata": {"labels": {"app": "x"}, "creationTimestamp": None},
        "spec": {
            "nodeName": "edge-1",
            "containers": [
                {
                    "name": "w",
                    "image": "img:1",
                    "resources": None,
                    "securityContext": {"runAsUser": 1000, "capabilities": {"add": ["NET_ADMIN"]}},
                    "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                    "x-future-field": [1, 2.5, True, None, {"deep": {"er": []}}],
                }
            ],
            "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
            "zzz": {},
        },
        "someFutureTopLevel": "kept",
    }
    doc = with_change("spec.evalSpec.template", copy.deepcopy(template))
    res = parse_resource(doc)
    assert isinstance(res, LifelongLearningJob)
    dumped = dump_resource(res)["spec"]["evalSpec"]["template"]
    assert dumped == template
    assert json.dumps(dumped) == json.dumps(template)  # same keys, same order, nulls kept
    # The dumped mapping is a copy: changing it does not change the model.
    dumped["spec"]["containers"][0]["image"] = "changed"
    assert res.spec.eval_spec.template["spec"]["containers"][0]["image"] == "img:1"
    # And YAML text round trip keeps it too.
    (again,) = load_documents(dump_yaml(res))
    assert again.spec.eval_spec.template == template  # type: ignore[union-attr]


def test_dump_yaml_quotes_strings_that_would_read_back_as_other_types() -> None:
    values = ["24:00", "02:00", "1e3", "=", "yes", "2024-05-01", "0x10", "null", "1_000"]
    doc = job_mapping()
    doc["spec"]["trainSpec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": f"V{i}", "value": v} for i, v in enumerate(values)
    ]
    res = parse_resource(doc)
    (again,) = load_documents(dump_yaml(res))
    assert again == res
    assert list(template_env(again.spec.train_spec.template).values()) == values  # type: ignore[union-attr]


def test_unknown_metadata_fields_are_preserved() -> None:
    doc = job_mapping()
    doc["metadata"].update(
        {
            "generateName": "atcii-",
            "finalizers": ["sedna.io/cleanup"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u"}],
            "labels": {"team": "edge"},
            "resourceVersion": "42",
            "creationTimestamp": "2024-05-01T12:00:00Z",
        }
    )
    res = parse_resource(doc)
    assert res.metadata.resource_version == "42"
    assert res.metadata.creation_timestamp == datetime(2024, 5, 1, 12, tzinfo=UTC)
    meta = dump_resource(res)["metadata"]
    assert meta["finalizers"] == ["sedna.io/cleanup"]
    assert meta["ownerReferences"] == doc["metadata"]["ownerReferences"]
    assert meta["generateName"] == "atcii-"
    assert meta["creationTimestamp"] == "2024-05-01T12:00:00Z"


def test_status_round_trips_with_enums_and_times() -> None:
    doc = job_mapping()
    doc["status"] = {
        "startTime": "2024-05-01T12:00:00Z",
        "conditions": [
            {
                "type": "Waiting",
                "status": "True",
                "stage": "Train",
                "lastHeartbeatTime": "2024-05-01T12:00:00Z",
            },
            {
                "type": "Completed",
                "status": "True",
                "stage": "Eval",
                "data": '{"model": "m"}',
                "reason": "ok",
            },
        ],
        "knowledgeBase": {
            "AIModels": {
                "numberOfAIModels": 1,
                "listOfAIModels": [{"modelID": "m1", "averagePrecision": 0.9}],
            },
            "AIClasses": {"numberOfAIClasses": 0},
            "samples": {"numberOfLabeledUnseenSample": 2, "numberOfUnseenSample": 3},
        },
    }
    res = parse_resource(doc)
    assert isinstance(res, LifelongLearningJob)
    last = res.last_condition
    assert last is not None and last.type is ConditionType.COMPLETED and last.stage is Stage.EVAL
    assert res.conditions[0].last_heartbeat_time == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert res.status is not None and res.status.knowledge_base is not None
    assert res.status.knowledge_base.ai_models.list_of_ai_models is not None
    assert res.status.knowledge_base.ai_models.list_of_ai_models[0].model_id == "m1"
    wire = dump_resource(res)
    assert wire["status"]["conditions"] == doc["status"]["conditions"]
    assert wire["status"]["knowledgeBase"]["AIModels"]["listOfAIModels"][0]["modelID"] == "m1"
    assert parse_resource(wire) == res


def test_models_build_from_python_with_snake_case_and_serialise_camel_case() -> None:
    (job,) = load_file(JOB_YAML)
    assert isinstance(job, LifelongLearningJob)
    job.status = LLJobStatus(conditions=[LLJobCondition(type=ConditionType.WAITING, stage=Stage.TRAIN)])
    wire = dump_resource(job)
    assert wire["status"] == {"conditions": [{"type": "Waiting", "status": "True", "stage": "Train"}]}
    assert wire["apiVersion"] == "sedna.io/v1alpha1" and wire["kind"] == "LifelongLearningJob"
    assert "trainSpec" in wire["spec"] and "train_spec" not in wire["spec"]


def test_model_kind_with_metrics() -> None:
    text = """
apiVersion: sedna.io/v1alpha1
kind: Model
metadata: {name: atcii-model, namespace: edge}
spec: {url: /output/model.pkl, format: pkl}
status:
  updateTime: "2024-05-01T12:00:00+08:00"
  metrics: [{key: precision_score, value: "0.91"}]
"""
    (model,) = load_documents(text)
    assert isinstance(model, Model)
    assert resource_key(model) == ("Model", "edge", "atcii-model")
    assert model.status is not None and model.status.metrics is not None
    assert model.status.metrics[0].value == "0.91"
    assert dump_resource(model)["status"]["updateTime"] == "2024-05-01T12:00:00+08:00"


def test_resource_key() -> None:
    (job,) = load_file(JOB_YAML)
    assert resource_key(job) == ("LifelongLearningJob", "default", "atcii-classifier-demo")


# ------------------------------------------------------------------ errors name the field


@pytest.mark.parametrize("value", ["high", "0.8", True, None, [0.8], 1.5, -0.1])
def test_bad_train_prob_names_its_field(value: Any) -> None:
    err = errors_of(with_change("spec.dataset.trainProb", value))
    assert paths(err) == ["spec.dataset.trainProb"]


def test_train_prob_high_message() -> None:
    text = JOB_YAML.read_text().replace("trainProb: 0.8", "trainProb: high")
    err = errors_of(text)
    assert err.path == "spec.dataset.trainProb"
    assert "spec.dataset.trainProb: Input should be a valid number" in str(err)
    assert str(err).startswith("input.yaml: ")
    assert "(line 11)" in err.errors[0][1]  # the line of the field in the YAML text


@pytest.mark.parametrize("value", [0, 1, 0.5, 0.0, 1.0])
def test_train_prob_accepts_numbers_in_range(value: float) -> None:
    res = parse_resource(with_change("spec.dataset.trainProb", value))
    assert res.spec.dataset.train_prob == value  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [None, "sedna.io/v1", "v1", "sedna.io/v1alpha2"])
def test_bad_api_version_names_it(value: str | None) -> None:
    doc = job_mapping()
    if value is None:
        del doc["apiVersion"]
    else:
        doc["apiVersion"] = value
    err = errors_of(doc)
    assert paths(err) == ["apiVersion"]


@pytest.mark.parametrize("value", [None, "Foo", "lifelonglearningjob", "DatasetList"])
def test_bad_kind_names_it(value: str | None) -> None:
    doc = job_mapping()
    if value is None:
        del doc["kind"]
    else:
        doc["kind"] = value
    err = errors_of(doc)
    assert paths(err) == ["kind"]
    if value is not None:
        assert "Dataset, LifelongLearningJob, Model" in err.errors[0][1]


def test_kind_must_match_the_model_class() -> None:
    with pytest.raises(Exception) as info:
        Dataset.model_validate(job_mapping())
    assert "kind" in str(info.value)


@pytest.mark.parametrize("op", list(CANONICAL_OPERATOR))
def test_all_upstream_operators_are_accepted(op: str) -> None:
    res = parse_resource(with_change("spec.trainSpec.trigger.condition.operator", op))
    assert res.spec.train_spec.trigger.condition.canonical_operator in {"gt", "ge", "eq", "ne", "le", "lt"}  # type: ignore[union-attr]


@pytest.mark.parametrize("op", ["~", "=>", "GT", "", ">>", 1])
def test_bad_operator_names_it(op: Any) -> None:
    err = errors_of(with_change("spec.trainSpec.trigger.condition.operator", op))
    assert paths(err) == ["spec.trainSpec.trigger.condition.operator"]


def test_bad_metric_and_threshold_name_them() -> None:
    doc = with_change("spec.trainSpec.trigger.condition.metric", "precision")
    doc["spec"]["trainSpec"]["trigger"]["condition"]["threshold"] = "500"
    err = errors_of(doc)
    assert sorted(paths(err)) == [
        "spec.trainSpec.trigger.condition.metric",
        "spec.trainSpec.trigger.condition.threshold",
    ]


@pytest.mark.parametrize("value", ["25:00", "2:00", "24:01", "12:60", "noon", "12:00:00", 1440, ""])
def test_bad_timer_names_it(value: Any) -> None:
    err = errors_of(with_change("spec.trainSpec.trigger.timer.end", value))
    assert paths(err) == ["spec.trainSpec.trigger.timer.end"]


def test_bad_check_period_names_it() -> None:
    err = errors_of(with_change("spec.trainSpec.trigger.checkPeriodSeconds", 0))
    assert paths(err) == ["spec.trainSpec.trigger.checkPeriodSeconds"]


@pytest.mark.parametrize(
    "name", ["Atcii", "a/b", "a+b", "a#b", "a\x00b", "-a", "a-", "a_b", "", "a" * 254, "a..b", 7]
)
def test_bad_name_names_it(name: Any) -> None:
    err = errors_of(with_change("metadata.name", name))
    assert paths(err) == ["metadata.name"]


@pytest.mark.parametrize("name", ["a", "atcii-classifier-demo", "a.b-c.d9", "a" * MAX_JOB_NAME])
def test_good_names(name: str) -> None:
    assert parse_resource(with_change("metadata.name", name)).name == name


def test_a_job_name_leaves_room_for_its_worker_names() -> None:
    """A job name valid for Kubernetes (253) but too long for its derived worker names
    ({job}-deploy-{round}-retry{n}) is refused at apply, naming metadata.name and the limit."""
    longest_worker = f"{'a' * MAX_JOB_NAME}-deploy-{'9' * 10}-retry999"  # ten digits of round
    assert len(longest_worker) == 253 and is_dns1123_subdomain(longest_worker)
    for name in ("a" * (MAX_JOB_NAME + 1), "a" * 253):
        err = errors_of(with_change("metadata.name", name))
        assert paths(err) == ["metadata.name"]
        assert f"at most {MAX_JOB_NAME}" in str(err) and f"is {len(name)} characters" in str(err)
    # a Dataset (nothing is derived from its name) may still use all 253 characters
    (doc,) = load_yaml(DATASET_YAML.read_text())
    doc["metadata"]["name"] = "d" * 253
    assert parse_resource(doc).name == "d" * 253


def _job_with_nodes(train: str | None, eval_: str | None, deploy: str | None) -> LifelongLearningJob:
    doc = job_mapping()
    for field, node in (("trainSpec", train), ("evalSpec", eval_), ("deploySpec", deploy)):
        tspec = doc["spec"][field]["template"]["spec"]
        tspec.pop("nodeName", None)
        if node is not None:
            tspec["nodeName"] = node
    res = parse_resource(doc)
    assert isinstance(res, LifelongLearningJob)
    return res


@pytest.mark.parametrize(
    ("nodes", "dataset_node", "roles", "deciding"),
    [
        (("t", "e", "d"), "ds", [("ds", ["dataset"]), ("t", ["train"]), ("e", ["eval"]), ("d", ["deploy"])],
         ("ds", "e", "d")),
        (("ds", "ds", "inf"), "ds", [("ds", ["dataset", "train", "eval"]), ("inf", ["deploy"])],
         ("ds", "ds", "inf")),
        ((None, None, None), "ds", [("ds", ["dataset"])], ("ds", "ds", "ds")),  # eval/deploy default
        (("t", None, "d"), None, [("t", ["train"]), ("d", ["deploy"])], (None, None, "d")),
    ],
)  # fmt: skip
def test_the_nodes_a_job_involves_and_their_roles(
    nodes: tuple[str | None, str | None, str | None],
    dataset_node: str | None,
    roles: list[tuple[str, list[str]]],
    deciding: tuple[str | None, str | None, str | None],
) -> None:
    spec = _job_with_nodes(*nodes).spec
    assert spec.node_roles(dataset_node) == roles
    assert spec.node_names(dataset_node) == [node for node, _ in roles]
    assert (
        tuple(spec.deciding_node(s, dataset_node) for s in (Stage.TRAIN, Stage.EVAL, Stage.DEPLOY))
        == deciding
    )


def test_worker_nodes_with_their_field_paths_and_a_jobs_nodes_given_its_dataset() -> None:
    job = _job_with_nodes("t", None, "d")
    assert job.spec.worker_nodes() == [
        ("spec.trainSpec.template.spec.nodeName", "t"),
        ("spec.evalSpec.template.spec.nodeName", None),
        ("spec.deploySpec.template.spec.nodeName", "d"),
    ]
    ds = parse_resource(
        {
            "apiVersion": "sedna.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": "ds1"},
            "spec": {"url": "/d.txt", "format": "txt", "nodeName": "ds-node"},
        }
    )
    assert isinstance(ds, Dataset)
    assert job.node_names(ds) == ["ds-node", "t", "d"]
    assert job.node_names(None) == ["t", "d"]
    assert dataset_node(dump_resource(ds)) == "ds-node" and dataset_node(None) is None


def test_parse_stored_reads_the_gms_worker_objects_too_and_names_a_bad_field() -> None:
    worker = {
        "apiVersion": "lifelong.io/v1",
        "kind": "Worker",
        "metadata": {"name": "j-train-1", "namespace": "default"},
        "spec": {
            "job": "j",
            "stage": "Train",
            "round": 1,
            "template": {"spec": {"nodeName": "n1", "containers": [{}]}},
        },
    }
    parsed = parse_stored(worker)
    assert isinstance(parsed, Worker) and parsed.node_name == "n1"
    assert isinstance(parse_stored(job_mapping()), LifelongLearningJob)
    with pytest.raises(ValidationError) as caught:
        parse_stored({**worker, "spec": {**worker["spec"], "round": "1"}})
    assert caught.value.errors == [("spec.round", "Input should be a valid integer")]


def test_round_state_and_history_of_a_job() -> None:
    res = parse_resource(job_mapping())
    assert isinstance(res, LifelongLearningJob)
    assert (res.round, res.state, res.history) == (0, (Stage.TRAIN, ConditionType.WAITING), [])
    conds = [("Train", "Waiting"), ("Train", "Ready"), ("Train", "Failed"), ("Train", "Waiting")]
    conds += [("Train", "Ready"), ("Train", "Completed"), ("Eval", "Waiting")]
    doc = job_mapping()
    doc["status"] = {"conditions": [{"type": t, "stage": s, "lastTransitionTime": "2026-01-01T00:00:00Z"}
                                    for s, t in conds]}  # fmt: skip
    res = parse_resource(doc)
    assert isinstance(res, LifelongLearningJob)
    assert res.round == 2  # two Train/Ready: the failed attempt used up its round
    assert res.state == (Stage.EVAL, ConditionType.WAITING)
    assert [(c.stage.value, c.type.value) for c in res.history] == conds
    assert res.history[0].last_transition_time == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize("namespace", ["Edge", "a.b", "a/b", "a" * 64])
def test_bad_namespace_names_it(namespace: str) -> None:
    err = errors_of(with_change("metadata.namespace", namespace))
    assert paths(err) == ["metadata.namespace"]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("spec.trainSpec.template", [], "spec.trainSpec.template"),
        ("spec.trainSpec.template", {"metadata": {}}, "spec.trainSpec.template.spec"),
        ("spec.evalSpec.template.spec.containers", [], "spec.evalSpec.template.spec.containers"),
        ("spec.evalSpec.template.spec.containers", ["img"], "spec.evalSpec.template.spec.containers[0]"),
        ("spec.deploySpec.template.spec.nodeName", "edge/1", "spec.deploySpec.template.spec.nodeName"),
        (
            "spec.trainSpec.template.spec.containers.0.args",
            ["train.py", 3],
            "spec.trainSpec.template.spec.containers[0].args[1]",
        ),
        (
            "spec.trainSpec.template.spec.containers.0.env.0.value",
            100,
            "spec.trainSpec.template.spec.containers[0].env[0].value",
        ),
        ("spec.dataset.name", "Lifelong", "spec.dataset.name"),
        ("spec.outputDir", "", "spec.outputDir"),
        ("spec.credentialName", "my/secret", "spec.credentialName"),
        ("spec.dataset.trainprob", 0.5, "spec.dataset.trainprob"),
        ("spec.evalSpec", "x", "spec.evalSpec"),
    ],
)
def test_bad_spec_fields_name_their_path(path: str, value: Any, expected: str) -> None:
    err = errors_of(with_change(path, value))
    assert paths(err) == [expected]


def test_missing_required_fields_are_all_named() -> None:
    doc = job_mapping()
    del doc["spec"]["outputDir"]
    del doc["spec"]["trainSpec"]["trigger"]["condition"]
    err = errors_of(doc)
    assert sorted(paths(err)) == ["spec.outputDir", "spec.trainSpec.trigger.condition"]
    assert all(msg == "Field required" for _, msg in err.errors)


def test_wire_form_takes_camel_case_keys_only() -> None:
    doc = job_mapping()
    doc["spec"]["dataset"]["train_prob"] = doc["spec"]["dataset"].pop("trainProb")
    err = errors_of(doc)
    assert sorted(err.errors) == [
        ("spec.dataset.trainProb", "Field required"),
        ("spec.dataset.train_prob", "unknown field"),
    ]


def test_unknown_field_is_called_unknown() -> None:
    err = errors_of(with_change("spec.outputdir", "/x"))
    assert err.errors == [("spec.outputdir", "unknown field")]


def test_bad_condition_in_status_names_it() -> None:
    doc = job_mapping()
    doc["status"] = {"conditions": [{"type": "Done", "stage": "Train", "lastHeartbeatTime": 5}]}
    err = errors_of(doc)
    assert sorted(paths(err)) == ["status.conditions[0].lastHeartbeatTime", "status.conditions[0].type"]


@pytest.mark.parametrize(
    ("field", "value"), [("format", "json"), ("nodeName", "edge/1"), ("url", ""), ("credentialName", "A")]
)
def test_bad_dataset_fields_name_them(field: str, value: str) -> None:
    (doc,) = load_yaml(DATASET_YAML.read_text())
    doc["spec"][field] = value
    err = errors_of(doc)
    assert paths(err) == [f"spec.{field}"]


def test_malformed_yaml_gives_line_and_column() -> None:
    text = JOB_YAML.read_text().replace("  dataset:\n", "  dataset: [\n")
    err = errors_of(text)
    assert err.path == ""
    assert "invalid YAML at line 11, column 5" in str(err)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\na: 2\n", "line 2, column 1: found duplicate key 'a'"),
        ("a:\n\tb: 1\n", "invalid YAML at line 2, column 1"),
        ("a: [1, 2\n", "invalid YAML at line 2"),
        ('{"apiVersion": ', "invalid JSON at line 1, column 16"),
        ("a: *nope\n", "invalid YAML at line 1"),
        ("\x08", "invalid YAML: unacceptable character #x0008"),
    ],
)
def test_unparseable_text_gives_a_clear_error(text: str, expected: str) -> None:
    err = errors_of(text)
    assert expected in str(err)


@pytest.mark.parametrize(("text", "what"), [("hello\n", "str"), ("- 1\n", "list"), ("[1]", "int")])
def test_a_document_that_is_not_a_mapping_is_rejected(text: str, what: str) -> None:
    err = errors_of(text)
    assert f"a resource must be a mapping, got {what}" in str(err)


def test_multi_document_yaml_names_the_failing_document() -> None:
    bad = JOB_YAML.read_text().replace("trainProb: 0.8", "trainProb: high")
    text = DATASET_YAML.read_text() + "---\n" + bad
    err = errors_of(text)
    assert err.source is not None and err.source.startswith("input.yaml, document 2")
    assert err.path == "spec.dataset.trainProb"


def test_multi_document_yaml_and_json_load_in_order() -> None:
    text = "---\n" + DATASET_YAML.read_text() + "---\n" + JOB_YAML.read_text() + "---\n"
    loaded = load_documents(text)
    assert [r.kind for r in loaded] == ["Dataset", "LifelongLearningJob"]
    as_json = json.dumps([dump_resource(r) for r in loaded])
    assert load_documents(as_json) == loaded


def test_kubernetes_list_is_expanded_and_errors_name_the_item() -> None:
    items = [dump_resource(r) for r in load_file(DATASET_YAML) + load_file(JOB_YAML)]
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
    assert [r.kind for r in load_documents(text)] == ["Dataset", "LifelongLearningJob"]
    items[1]["spec"]["dataset"]["trainProb"] = "high"
    err = errors_of(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    assert err.path == "items[1].spec.dataset.trainProb"


def test_load_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        load_file(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in str(info.value)


# ------------------------------------------------------------------ helpers


def test_worker_template_reads_the_first_container() -> None:
    (job,) = load_file(JOB_YAML)
    assert isinstance(job, LifelongLearningJob)
    worker = WorkerTemplate.from_template(job.spec.template_for(Stage.TRAIN))
    assert worker.node_name == "edge-node"
    assert worker.container_name == "train-worker"
    assert worker.image == "kubeedge/sedna-example-lifelong-learning-atcii-classifier:v0.3.0"
    assert worker.command == []
    assert worker.args == ["train.py"]
    assert worker.env == {"early_stopping_rounds": "100", "metric_name": "mlogloss"}
    deploy = WorkerTemplate.from_template(job.spec.template_for(Stage.DEPLOY))
    assert deploy.args == ["inference.py"]


def test_template_env_skips_value_from_and_defaults_to_empty() -> None:
    template = {
        "spec": {
            "containers": [
                {"env": [{"name": "A", "value": "1"}, {"name": "B"}, {"name": "C", "valueFrom": {"x": 1}}]}
            ]
        }
    }
    assert template_env(template) == {"A": "1", "B": ""}


def test_node_names_lists_each_template_node_once() -> None:
    doc = with_change("spec.deploySpec.template.spec.nodeName", "infer-node")
    del doc["spec"]["evalSpec"]["template"]["spec"]["nodeName"]
    res = parse_resource(doc)
    assert res.spec.node_names() == ["edge-node", "infer-node"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("start", "end", "inside", "outside"),
    [
        ("02:00", "24:00", [time(2, 0), time(23, 59), time(12, 0)], [time(1, 59), time(0, 0)]),
        ("23:00", "01:00", [time(23, 0), time(0, 30), time(1, 0)], [time(1, 1), time(22, 59), time(12, 0)]),
        ("10:00", "10:00", [time(10, 0, 59)], [time(10, 1), time(9, 59)]),
    ],
)
def test_timer_window_wraps_past_midnight(
    start: str, end: str, inside: list[time], outside: list[time]
) -> None:
    timer = LLTimer(start=start, end=end)
    assert all(timer.contains(t) for t in inside)
    assert not any(timer.contains(t) for t in outside)


def test_format_path() -> None:
    assert format_path(("spec", "containers", 0, "env", 1, "value")) == "spec.containers[0].env[1].value"
    assert format_path((0, "spec")) == "[0].spec"
    assert format_path(()) == ""


# The models are built on first use (defer_build: a process builds only the models it uses,
# docs/performance.md). Threads of the GM and the LC may use a model first at the same moment;
# pydantic >= 2.14 serialises that build (before, a thread could validate with the parent
# class's validator while another built the model). Run in a fresh interpreter, where no model
# is built yet.
FIRST_USE_IN_THREADS = """
import json, sys, threading
from pathlib import Path
from lifelong.common.api import LifelongLearningJob, dump_resource, load_yaml, parse_resource
from lifelong.common.messages import Hello, JobReady, parse_job_report

assert not LifelongLearningJob.__pydantic_complete__, "built at import"
assert not Hello.__pydantic_complete__, "built at import"
assert not JobReady.__pydantic_complete__, "built at import"
assert sys.modules["lifelong.common.messages"]._job_report is None, "report adapter made at import"
(doc,) = load_yaml(Path(sys.argv[1]).read_text())
report = {"event": "ready", "stage": "Eval", "round": 1}
hello = {"epoch": "ep1", "resources": [{"kind": "Dataset", "ns": "default", "name": "d", "rv": "1"}]}
barrier = threading.Barrier(12)
results, errors = {"job": [], "report": [], "direct": [], "hello": []}, []

def use(what):
    barrier.wait()
    try:
        if what == "job":
            out = dump_resource(parse_resource(doc))
        elif what == "report":  # a TypeAdapter over models (JobReady) built on first use
            out = parse_job_report(report).model_dump()
        elif what == "direct":  # the same model, first used directly
            out = JobReady.model_validate(report).model_dump()
        else:  # a list body item by item (another TypeAdapter)
            out = Hello.parse_lenient(hello)[0].model_dump()
        results[what].append(json.dumps(out, sort_keys=True, default=str))
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=use, args=(w,)) for w in ("job", "report", "direct", "hello") * 3]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert errors == [], errors
for what, outs in results.items():
    assert len(outs) == 3 and len(set(outs)) == 1, (what, outs)
print("ok")
"""


def test_models_are_built_on_first_use_and_safely_from_threads() -> None:
    job = Path(__file__).resolve().parents[2] / "examples" / "atcii" / "lifelonglearningjob.yaml"
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_USE_IN_THREADS, str(job)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_a_status_write_parses_to_the_same_model_without_parsing_the_spec_again() -> None:
    before_obj = job_mapping()
    before_obj["metadata"].update(resourceVersion="7", uid="u-1", generation=1)
    before = parse_stored(before_obj)
    assert isinstance(before, LifelongLearningJob)
    after_obj = copy.deepcopy(before_obj)
    after_obj["metadata"]["resourceVersion"] = "8"
    stamp = "2026-12-02T10:00:00Z"
    cond = {"type": "Waiting", "stage": "Train", "lastTransitionTime": stamp, "lastHeartbeatTime": stamp}
    after_obj["status"] = {"conditions": [cond]}
    after = parse_keeping_spec(before, after_obj)
    assert after == parse_stored(after_obj)
    assert after.spec is before.spec  # shared, not validated again
    assert after.metadata.resource_version == "8" and after.last_condition is not None
    bad = copy.deepcopy(after_obj)
    bad["status"]["conditions"][0]["stage"] = "Nowhere"
    with pytest.raises(ValidationError) as info:
        parse_keeping_spec(before, bad)
    assert any(path.startswith("status.conditions[0].stage") for path, _ in info.value.errors)
    with pytest.raises(ValidationError):
        parse_keeping_spec(before, {**after_obj, "kind": "Dataset"})
