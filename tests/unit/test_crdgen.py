"""The generated CRDs: in sync with deploy/crds, structural, and agreeing with the models."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic._internal._docs_extraction import extract_docstrings_from_cls

from lifelong.common.api import (
    ApiModel,
    Dataset,
    LifelongLearningJob,
    Model,
    crdgen,
    load_yaml,
    parse_resource,
)
from lifelong.common.errors import ValidationError

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "deploy" / "crds"
EXAMPLES = ROOT / "examples" / "atcii"


def crd(kind: type[Any]) -> dict[str, Any]:
    return yaml.safe_load((CRDS / crdgen.crd_filename(kind)).read_text())  # type: ignore[no-any-return]


def schema_nodes(node: dict[str, Any], where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield where, node
    for name, sub in node.get("properties", {}).items():
        yield from schema_nodes(sub, f"{where}.{name}")
    if "items" in node:
        yield from schema_nodes(node["items"], f"{where}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{where}.*")


def test_crd_files_are_up_to_date() -> None:
    problems = crdgen.check(CRDS)
    assert problems == [], (
        "deploy/crds differs from the models; run `python -m lifelong.common.api.crdgen deploy/crds`:\n"
        + "\n".join(problems)
    )
    assert sorted(p.name for p in CRDS.glob("sedna.io_*.yaml")) == [
        "sedna.io_datasets.yaml",
        "sedna.io_lifelonglearningjobs.yaml",
        "sedna.io_models.yaml",
    ]


def test_check_reports_drift_and_missing_files(tmp_path: Path) -> None:
    crdgen.write(tmp_path)
    assert crdgen.check(tmp_path) == []
    path = tmp_path / "sedna.io_datasets.yaml"
    path.write_text(path.read_text().replace("- csv\n", "- csv\n                - json\n"))
    (tmp_path / "sedna.io_models.yaml").unlink()
    problems = crdgen.check(tmp_path)
    assert len(problems) == 2
    assert "+++" in problems[0] and "-                - json" in problems[0]
    assert problems[1].endswith("sedna.io_models.yaml: missing")
    assert crdgen.main(["--check", str(tmp_path)]) == 1
    assert crdgen.main([str(tmp_path)]) == 0
    assert crdgen.main(["--check", str(tmp_path)]) == 0


def test_module_entry_point_check_exits_1_with_a_diff(tmp_path: Path) -> None:
    crdgen.write(tmp_path)
    path = tmp_path / "sedna.io_lifelonglearningjobs.yaml"
    path.write_text(path.read_text().replace("shortNames:\n    - ll", "shortNames:\n    - lj"))
    cmd = [sys.executable, "-m", "lifelong.common.api.crdgen", "--check", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert "-    - lj" in proc.stderr and "+    - ll" in proc.stderr
    assert "differ from the models" in proc.stderr


@pytest.mark.parametrize(
    ("kind", "plural", "short_names"),
    [
        (LifelongLearningJob, "lifelonglearningjobs", ["ll"]),
        (Dataset, "datasets", None),
        (Model, "models", None),
    ],
)
def test_crd_names_as_upstream(kind: type[Any], plural: str, short_names: list[str] | None) -> None:
    doc = crd(kind)
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
    assert doc["kind"] == "CustomResourceDefinition"
    assert doc["metadata"]["name"] == f"{plural}.sedna.io"
    spec = doc["spec"]
    assert spec["group"] == "sedna.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == kind.KIND
    assert spec["names"]["listKind"] == kind.KIND + "List"
    assert spec["names"]["plural"] == plural
    assert spec["names"]["singular"] == kind.KIND.lower()
    assert spec["names"].get("shortNames") == short_names
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_lifelong_learning_job_printer_columns() -> None:
    (version,) = crd(LifelongLearningJob)["spec"]["versions"]
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Stage": ("string", ".status.conditions[-1].stage"),
        "Status": ("string", ".status.conditions[-1].type"),
        "Age": ("date", ".metadata.creationTimestamp"),
    }


@pytest.mark.parametrize("kind", [LifelongLearningJob, Dataset, Model])
def test_schema_is_structural(kind: type[Any]) -> None:
    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    metadata = {"type": "object"}
    if kind is LifelongLearningJob:  # its name is a label value of its worker Pods: 63 at most
        metadata["properties"] = {"name": {"type": "string", "maxLength": 63}}  # type: ignore[assignment]
    assert schema["properties"]["metadata"] == metadata
    assert set(schema["required"]) >= {"metadata", "spec"}
    for where, node in schema_nodes(schema):
        assert not {"$ref", "$defs", "title", "anyOf", "oneOf", "allOf", "const", "default"} & set(node), (
            where
        )
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), where
        assert not ("properties" in node and "additionalProperties" in node), where


def test_pod_templates_preserve_unknown_fields() -> None:
    spec = crd(LifelongLearningJob)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for part in ("trainSpec", "evalSpec", "deploySpec"):
        template = spec["properties"][part]["properties"]["template"]
        assert template["type"] == "object"
        assert template["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["properties"]["dataset"]["properties"]["trainProb"] == {
        "description": spec["properties"]["dataset"]["properties"]["trainProb"]["description"],
        "maximum": 1,
        "minimum": 0,
        "type": "number",
    }


def test_generator_refuses_what_a_crd_cannot_express() -> None:
    with pytest.raises(crdgen.SchemaError):
        crdgen.convert_schema({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {}, "x")
    with pytest.raises(crdgen.SchemaError):
        crdgen.convert_schema({"type": "object", "patternProperties": {}}, {}, "x")
    with pytest.raises(crdgen.SchemaError):
        crdgen.convert_schema({"$ref": "#/$defs/A"}, {"A": {"$ref": "#/$defs/A"}}, "x")
    assert crdgen.convert_schema(
        {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}], "title": "t"}, {"A": {"type": "string"}}, "x"
    ) == {
        "nullable": True,
        "type": "string",
    }


# ------------------------------------------------------------------ descriptions: the fields' docstrings


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _object_node(node: dict[str, Any]) -> dict[str, Any]:
    while "properties" not in node:
        node = node["items"] if "items" in node else node["additionalProperties"]
    return node


def documented_fields(
    cls: type[BaseModel], node: dict[str, Any], where: str
) -> Iterator[tuple[str, str, Any]]:
    """(path, the field's docstring, its node in the generated schema) for every documented field
    reachable from ``cls``. The docstrings are read by pydantic's own extractor (what
    ``use_attribute_docstrings`` used), from the class along the MRO that declares the field."""
    for name, info in cls.model_fields.items():
        if where == "" and name == "metadata":
            continue  # the API server's: the CRD says only `type: object`
        key = info.alias or name
        owner = next(k for k in cls.__mro__ if name in inspect.get_annotations(k))
        doc = info.description or extract_docstrings_from_cls(owner, use_inspect=True).get(name)
        sub = node["properties"].get(key)
        if doc:
            yield f"{where}.{key}", doc, sub
        for model in _models_in(info.annotation):
            yield from documented_fields(model, _object_node(sub), f"{where}.{key}")


@pytest.mark.parametrize("kind", [LifelongLearningJob, Dataset, Model])
def test_every_documented_field_has_its_description_in_the_crd(kind: type[Any]) -> None:
    """Generated afresh (not read from deploy/crds, which a regeneration would change alike)."""
    schema = crdgen.structural_schema(kind)
    found = list(documented_fields(kind, schema, ""))
    assert found  # the walk reached the documented fields
    for where, doc, node in found:
        assert node is not None, f"{where} is missing from the {kind.KIND} CRD"
        assert node.get("description") == doc, where


def test_models_do_not_parse_their_source_at_import() -> None:
    """pydantic's use_attribute_docstrings re-reads every model's source when its class is built:
    0.1 s of CPU at every start of the GM, the LC and the client. crdgen reads the docstrings."""
    assert not ApiModel.model_config.get("use_attribute_docstrings")
    assert LifelongLearningJob.model_fields["spec"].description is None


# ------------------------------------------------------------------ the CRD schema and the models agree

try:
    import jsonschema
except ImportError:  # pragma: no cover - the test extra installs it
    jsonschema = None

needs_jsonschema = pytest.mark.skipif(jsonschema is None, reason="jsonschema is not installed")


def _for_jsonschema(node: Any) -> Any:
    """OpenAPI v3 ``nullable: true`` spelled the JSON-schema way, so jsonschema honours it."""
    if isinstance(node, list):
        return [_for_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _for_jsonschema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def crd_errors(doc: dict[str, Any]) -> list[str]:
    kind = {"LifelongLearningJob": LifelongLearningJob, "Dataset": Dataset, "Model": Model}[doc["kind"]]
    schema = _for_jsonschema(crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    validator = jsonschema.Draft4Validator(schema)
    return [".".join(map(str, e.absolute_path)) + ": " + e.message for e in validator.iter_errors(doc)]


@needs_jsonschema
@pytest.mark.parametrize("name", ["dataset.yaml", "lifelonglearningjob.yaml"])
def test_examples_validate_against_their_crd(name: str) -> None:
    (doc,) = load_yaml((EXAMPLES / name).read_text())
    assert crd_errors(doc) == []


@needs_jsonschema
def test_a_full_status_validates_against_the_crd() -> None:
    (doc,) = load_yaml((EXAMPLES / "lifelonglearningjob.yaml").read_text())
    doc["status"] = {
        "startTime": "2024-05-01T12:00:00Z",
        "conditions": [{"type": "Running", "status": "True", "stage": "Deploy", "message": "m"}],
        "knowledgeBase": {"AIModels": {"numberOfAIModels": 0}, "AIClasses": {}, "samples": {}},
    }
    parse_resource(doc)
    assert crd_errors(doc) == []


BAD_JOBS = [
    ("spec.dataset.trainProb", "high"),
    ("spec.dataset.trainProb", 1.5),
    ("spec.dataset.name", "Bad_Name"),
    ("spec.trainSpec.trigger.condition.operator", "~"),
    ("spec.trainSpec.trigger.condition.metric", "precision"),
    ("spec.trainSpec.trigger.condition.threshold", "500"),
    ("spec.trainSpec.trigger.timer.start", "25:00"),
    ("spec.trainSpec.trigger.timer.end", "2:00"),
    ("spec.trainSpec.trigger.checkPeriodSeconds", 0),
    ("spec.trainSpec.template.spec.containers", []),
    ("spec.trainSpec.template.spec.nodeName", "edge/1"),
    ("spec.evalSpec.template.spec", "x"),
    ("spec.outputDir", ""),
    ("spec.credentialName", "My-Secret"),
    ("status", {"conditions": [{"type": "Done", "stage": "Train"}]}),
    ("status", {"conditions": [{"type": "Ready", "stage": "Serve"}]}),
    ("status", {"startTime": 5}),
]


@needs_jsonschema
@pytest.mark.parametrize(("path", "value"), BAD_JOBS)
def test_models_and_crd_reject_the_same_bad_job(path: str, value: Any) -> None:
    (doc,) = load_yaml((EXAMPLES / "lifelonglearningjob.yaml").read_text())
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[part]
    node[last] = value
    with pytest.raises(ValidationError):
        parse_resource(doc)
    assert crd_errors(doc), f"the CRD schema accepts {path}={value!r} but the models reject it"


@needs_jsonschema
@pytest.mark.parametrize(("field", "value"), [("format", "json"), ("nodeName", "Edge"), ("url", "")])
def test_models_and_crd_reject_the_same_bad_dataset(field: str, value: str) -> None:
    (doc,) = load_yaml((EXAMPLES / "dataset.yaml").read_text())
    doc["spec"][field] = value
    with pytest.raises(ValidationError):
        parse_resource(doc)
    assert crd_errors(doc)
