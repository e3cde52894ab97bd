"""Generates the ``sedna.io/v1alpha1`` CustomResourceDefinitions from the pydantic models.

    python -m lifelong.common.api.crdgen deploy/crds           write one YAML file per kind
    python -m lifelong.common.api.crdgen --check deploy/crds   exit 1 (with a diff) if they differ

The models' JSON schema becomes a *structural* OpenAPI v3 schema, as Kubernetes requires:
``$ref``s are inlined (no ``$defs``), ``title`` and ``default`` are dropped, ``anyOf`` with
``null`` becomes ``nullable: true``, ``const`` becomes a one-value ``enum``, open mappings (pod
templates) get ``x-kubernetes-preserve-unknown-fields: true`` and ``metadata`` is a plain
``type: object`` (the API server owns its schema), except a shorter ``metadata.name`` limit
(``Resource.MAX_NAME`` and ``MAX_NAME_ON_KUBERNETES``: a job's name becomes its worker Pods'
names and a label value of them). Anything else that
Kubernetes would not accept raises ``SchemaError``, so the generator cannot quietly emit a CRD
the API server rejects.

Field descriptions are the models' attribute docstrings (the string statement right after a
field's annotation), read here from the models' source with one ``ast`` parse per module
(``field_docstrings``). The models do not ask pydantic for them (``use_attribute_docstrings``):
pydantic then re-reads and parses each model's source when the class is built, in every process
that imports the API (0.1 s or more of CPU at each GM, LC and client start), and only this
generator uses the descriptions.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from lifelong.common.api.dataset import Dataset
from lifelong.common.api.lifelonglearningjob import LifelongLearningJob
from lifelong.common.api.meta import DNS1123_SUBDOMAIN_MAX, GROUP, VERSION, Resource
from lifelong.common.api.model import Model

KINDS: tuple[type[Resource[Any, Any]], ...] = (LifelongLearningJob, Dataset, Model)
"""The kinds a CRD is generated for, in file order."""

HEADER = (
    "# Generated from the models in lifelong.common.api by `python -m lifelong.common.api.crdgen`\n"
    "# (`make crds`). Do not edit by hand: a test fails when this file and the models differ.\n"
)

PRINTER_COLUMNS: dict[str, list[dict[str, str]]] = {
    LifelongLearningJob.KIND: [
        {
            "name": "Stage",
            "type": "string",
            "description": "Stage of the job's current (last) condition",
            "jsonPath": ".status.conditions[-1].stage",
        },
        {
            "name": "Status",
            "type": "string",
            "description": "Type of the job's current (last) condition",
            "jsonPath": ".status.conditions[-1].type",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}

_API_VERSION_DOC = (
    "APIVersion is the versioned schema of this representation of an object; always sedna.io/v1alpha1 here."
)
_KIND_DOC = "Kind is the REST resource this object represents, in CamelCase."

# Keywords of apiextensions.k8s.io/v1 JSONSchemaProps that this generator may emit.
_ALLOWED = frozenset(
    {
        "type",
        "format",
        "description",
        "properties",
        "required",
        "items",
        "additionalProperties",
        "enum",
        "nullable",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "uniqueItems",
        "multipleOf",
        "x-kubernetes-preserve-unknown-fields",
    }
)
_DROPPED = frozenset({"title", "default", "examples"})
_PRESERVE = "x-kubernetes-preserve-unknown-fields"


class SchemaError(ValueError):
    """The models' JSON schema has something a structural CRD schema cannot express."""


def _null(option: Any) -> bool:
    return isinstance(option, dict) and option.get("type") == "null"


def convert_schema(node: Any, defs: dict[str, Any], where: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """One JSON-schema node -> a structural node, keys sorted (as controller-gen writes them).

    ``defs`` are the schema's ``$defs``; ``where`` names the node in errors (a field path).
    Raises ``SchemaError`` for what a structural schema cannot say (``anyOf`` of several
    types, ``patternProperties``, a recursive ``$ref``)."""
    return dict(sorted(_convert_node(node, defs, where, seen).items()))


def _convert_node(node: Any, defs: dict[str, Any], where: str, seen: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise SchemaError(f"{where}: expected a schema object, got {node!r}")
    node = dict(node)
    if "$ref" in node:
        ref = node.pop("$ref")
        name = str(ref).rsplit("/", 1)[-1]
        if not str(ref).startswith("#/$defs/") or name not in defs:
            raise SchemaError(f"{where}: cannot resolve $ref {ref!r}")
        if name in seen:
            raise SchemaError(f"{where}: recursive schema {name!r} cannot be inlined")
        target = convert_schema(defs[name], defs, where, (*seen, name))
        return {**target, **_convert_keys(node, defs, where, seen)}
    if "anyOf" in node:
        options = node.pop("anyOf")
        rest = [o for o in options if not _null(o)]
        if len(rest) != 1 or len(rest) == len(options):
            raise SchemaError(f"{where}: only 'X or null' unions can be expressed, got anyOf {options!r}")
        inner = convert_schema(rest[0], defs, where, seen)
        return {**inner, **_convert_keys(node, defs, where, seen), "nullable": True}
    return _convert_keys(node, defs, where, seen)


def _convert_keys(
    node: dict[str, Any], defs: dict[str, Any], where: str, seen: tuple[str, ...]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {
                name: convert_schema(sub, defs, f"{where}.{name}", seen)
                for name, sub in sorted(value.items())
            }
        elif key == "required":
            out[key] = sorted(value)
        elif key == "items":
            out[key] = convert_schema(value, defs, f"{where}[]", seen)
        elif key == "additionalProperties":
            if value is True:
                out[_PRESERVE] = True
            elif isinstance(value, dict):
                out[key] = convert_schema(value, defs, f"{where}.*", seen)
            # False: structural schemas cannot say it; the pydantic models reject unknown fields
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key in _ALLOWED:
            out[key] = value
        else:
            raise SchemaError(f"{where}: JSON schema keyword {key!r} has no place in a CRD schema")
    return out


def _check_structural(node: dict[str, Any], where: str) -> None:
    if "type" not in node and not node.get(_PRESERVE):
        raise SchemaError(f"{where}: every schema node of a CRD needs a type")
    if "properties" in node and "additionalProperties" in node:
        raise SchemaError(f"{where}: properties and additionalProperties cannot be combined")
    for name, sub in node.get("properties", {}).items():
        _check_structural(sub, f"{where}.{name}")
    if "items" in node:
        _check_structural(node["items"], f"{where}[]")
    if isinstance(node.get("additionalProperties"), dict):
        _check_structural(node["additionalProperties"], f"{where}.*")


@functools.cache
def _module_docstrings(module: str) -> dict[str, dict[str, str]]:
    """Class ``__qualname__`` -> {attribute: docstring} for the classes of one module's source.

    An attribute's docstring is a string statement right after its annotated assignment in the
    class body (as PEP 257 and pydantic's ``use_attribute_docstrings`` read them), cleaned with
    ``inspect.cleandoc``. Classes inside functions are not looked at."""
    found: dict[str, dict[str, str]] = {}
    source = sys.modules[module].__file__
    if source is None:
        return found
    tree = ast.parse(Path(source).read_text(encoding="utf-8"))

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                qualname = prefix + node.name
                docs = found.setdefault(qualname, {})
                for field, after in zip(node.body, node.body[1:], strict=False):
                    if (
                        isinstance(field, ast.AnnAssign)
                        and isinstance(field.target, ast.Name)
                        and isinstance(after, ast.Expr)
                        and isinstance(after.value, ast.Constant)
                        and isinstance(after.value.value, str)
                    ):
                        docs[field.target.id] = inspect.cleandoc(after.value.value)
                visit(node.body, qualname + ".")

    visit(tree.body, "")
    return found


def field_docstrings(cls: type[BaseModel]) -> dict[str, str]:
    """Field name (the Python attribute) -> its docstring, for the fields of ``cls`` that have one.

    A field's docstring is the one in the class that declares it, the nearest along the MRO that
    annotates the name: a subclass that redeclares a field without a docstring leaves it
    undocumented, as pydantic does when it collects the docstrings itself."""
    docs: dict[str, str] = {}
    for name in cls.model_fields:
        for klass in cls.__mro__:
            if name in inspect.get_annotations(klass):
                doc = _module_docstrings(klass.__module__).get(klass.__qualname__, {}).get(name)
                if doc is not None:
                    docs[name] = doc
                break
    return docs


class _DescribedFields(GenerateJsonSchema):
    """A JSON schema whose fields have their attribute docstrings as ``description`` (unless
    the field sets one itself, ``Field(description=...)``), placed on the field's own schema as
    pydantic places a field's description."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._models: list[type[BaseModel]] = []

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        self._models.append(schema["cls"])
        try:
            return super().model_schema(schema)
        finally:
            self._models.pop()

    def model_fields_schema(self, schema: core_schema.ModelFieldsSchema) -> JsonSchemaValue:
        json_schema = super().model_fields_schema(schema)
        if not self._models:
            return json_schema
        cls = self._models[-1]
        properties = json_schema.get("properties", {})
        for name, doc in field_docstrings(cls).items():
            info = cls.model_fields[name]
            if info.description is not None:
                continue
            alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
            key = (alias or name) if self.by_alias else name
            if key in properties:
                properties[key]["description"] = doc
        return json_schema


def structural_schema(cls: type[Resource[Any, Any]]) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one kind."""
    raw = cls.model_json_schema(by_alias=True, mode="validation", schema_generator=_DescribedFields)
    defs = raw.pop("$defs", {})
    schema = convert_schema(raw, defs, cls.KIND)
    props = schema["properties"]
    props["apiVersion"] = {"description": _API_VERSION_DOC, "type": "string"}
    props["kind"] = {"description": _KIND_DOC, "type": "string"}
    props["metadata"] = {"type": "object"}
    longest = min(cls.MAX_NAME, cls.MAX_NAME_ON_KUBERNETES)
    if longest < DNS1123_SUBDOMAIN_MAX:  # the API server lets a CRD shorten metadata.name
        props["metadata"]["properties"] = {"name": {"type": "string", "maxLength": longest}}
    schema["required"] = sorted({*schema.get("required", ()), "metadata", "spec"})
    _check_structural(schema, cls.KIND)
    return schema


def crd_for(cls: type[Resource[Any, Any]]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, as a mapping."""
    names: dict[str, Any] = {
        "kind": cls.KIND,
        "listKind": f"{cls.KIND}List",
        "plural": cls.PLURAL,
        "singular": cls.KIND.lower(),
    }
    if cls.SHORT_NAMES:
        names["shortNames"] = list(cls.SHORT_NAMES)
    version: dict[str, Any] = {"name": VERSION, "served": True, "storage": True}
    if cls.KIND in PRINTER_COLUMNS:
        version["additionalPrinterColumns"] = PRINTER_COLUMNS[cls.KIND]
    version["schema"] = {"openAPIV3Schema": structural_schema(cls)}
    version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{cls.PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def crd_filename(cls: type[Resource[Any, Any]]) -> str:
    """``sedna.io_lifelonglearningjobs.yaml``, as upstream names them."""
    return f"{GROUP}_{cls.PLURAL}.yaml"


def render_crd(cls: type[Resource[Any, Any]]) -> str:
    """The CRD file's text."""
    body = yaml.safe_dump(crd_for(cls), sort_keys=False, default_flow_style=False, width=100)
    return HEADER + "---\n" + body


def generate() -> dict[str, str]:
    """File name -> text, for every kind."""
    return {crd_filename(cls): render_crd(cls) for cls in KINDS}


def write(directory: str | Path) -> list[Path]:
    """Write the CRD files into ``directory`` (created if missing); return their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in generate().items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def check(directory: str | Path) -> list[str]:
    """Differences between the files in ``directory`` and what ``write`` would produce.

    An empty list means up to date; otherwise one unified diff (or "missing") per file.
    """
    problems = []
    for name, expected in generate().items():
        path = Path(directory) / name
        try:
            actual = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"{path}: missing")
            continue
        if actual != expected:
            diff = difflib.unified_diff(
                actual.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                fromfile=f"{path} (on disk)",
                tofile=f"{path} (generated)",
            )
            problems.append("".join(diff))
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lifelong.common.api.crdgen",
        description="Generate the sedna.io/v1alpha1 CRDs from lifelong's API models.",
    )
    parser.add_argument("directory", help="where the CRD files are (e.g. deploy/crds)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the files differ")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.directory)
        if problems:
            for problem in problems:
                print(problem, file=sys.stderr)
            print(
                f"CRDs in {args.directory} differ from the models; regenerate them with "
                f"`python -m lifelong.common.api.crdgen {args.directory}` (make crds).",
                file=sys.stderr,
            )
            return 1
        print(f"CRDs in {args.directory} are up to date.")
        return 0
    for path in write(args.directory):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
