"""Reading and writing resources: YAML/JSON text <-> models, with errors that name the field.

Every failure is a ``lifelong.common.errors.ValidationError`` whose ``errors`` are
``(path, message)`` pairs, the path dotted with list indices (``spec.trainSpec.template.spec.
containers[0].image``). No pydantic or PyYAML object reaches the caller.

YAML is read the way Kubernetes reads it, not as PyYAML's YAML 1.1 default would:
``end: 24:00`` is the string ``"24:00"`` (not the base-60 integer 1440), timestamps stay
strings, ``1e3`` is a number, ``=`` is a string, and a key given twice is an error.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast

import pydantic

from lifelong.common.api.dataset import Dataset
from lifelong.common.api.lifelonglearningjob import LifelongLearningJob
from lifelong.common.api.meta import API_VERSION, Resource
from lifelong.common.api.model import Model
from lifelong.common.api.worker import Worker
from lifelong.common.errors import ValidationError

if TYPE_CHECKING:
    from yaml.nodes import Node

AnyResource: TypeAlias = LifelongLearningJob | Dataset | Model
"""Any of the resource kinds lifelong knows."""

# The wire form has camelCase keys only; Python code may still build models by attribute name.
# (``by_name`` of model_validate exists from pydantic 2.11 on; older ones also accept snake_case.)
_WIRE_NAMES_ONLY: dict[str, Any] = (
    {"by_alias": True, "by_name": False}
    if "by_name" in inspect.signature(pydantic.BaseModel.model_validate).parameters
    else {}
)

RESOURCE_TYPES: dict[str, type[AnyResource]] = {
    cls.KIND: cls for cls in (LifelongLearningJob, Dataset, Model)
}
"""Model class by ``kind``."""

# --------------------------------------------------------------------------------------------
# YAML the Kubernetes way (``kyaml``, imported when YAML is read or written)


def load_yaml(text: str, source: str | None = None) -> list[Any]:
    """The documents of a YAML text as plain data, read the Kubernetes way (see module doc).

    Empty documents are skipped. Malformed YAML raises ``ValidationError`` with line and column.
    """
    from lifelong.common.api import kyaml

    return [data for data, _ in kyaml.documents(text, source) if data is not None]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# errors


def format_path(loc: Iterable[int | str]) -> str:
    """``("spec", "containers", 0, "image")`` -> ``spec.containers[0].image``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_MESSAGES = {
    "model_type": "Input should be a mapping",
    "model_attributes_type": "Input should be a mapping",
    "dict_type": "Input should be a mapping",
    "extra_forbidden": "unknown field",
}


def _pydantic_errors(
    exc: pydantic.ValidationError, prefix: tuple[int | str, ...] = (), node: Node | None = None
) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = prefix + tuple(err["loc"])
        msg = _MESSAGES.get(err["type"], err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        line = None
        if node is not None:
            from lifelong.common.api import kyaml  # a node comes from a YAML text: already loaded

            line = kyaml.line_of(node, loc)
        if line is not None:
            msg = f"{msg} (line {line})"
        errors.append((format_path(loc), msg))
    return errors


# --------------------------------------------------------------------------------------------
# parsing


def _check_type_meta(obj: dict[str, Any], prefix: tuple[int | str, ...]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    api_version = obj.get("apiVersion")
    if api_version is None:
        errors.append((format_path((*prefix, "apiVersion")), "Field required"))
    elif api_version != API_VERSION:
        errors.append(
            (format_path((*prefix, "apiVersion")), f"must be {API_VERSION!r}, got {str(api_version)[:80]!r}")
        )
    kind = obj.get("kind")
    if kind is None:
        errors.append((format_path((*prefix, "kind")), "Field required"))
    elif kind not in RESOURCE_TYPES:
        known = ", ".join(sorted(RESOURCE_TYPES))
        message = f"unknown kind {str(kind)[:80]!r}; expected one of {known}"
        errors.append((format_path((*prefix, "kind")), message))
    return errors


def _parse(
    obj: Any, source: str | None, prefix: tuple[int | str, ...] = (), node: Node | None = None
) -> AnyResource:
    if not isinstance(obj, dict):
        what = "null" if obj is None else type(obj).__name__
        raise ValidationError(
            [(format_path(prefix), f"a resource must be a mapping, got {what}")], source=source
        )
    errors = _check_type_meta(obj, prefix)
    if errors:
        raise ValidationError(errors, source=source)
    cls = RESOURCE_TYPES[obj["kind"]]
    try:
        return cls.model_validate(obj, **_WIRE_NAMES_ONLY)
    except pydantic.ValidationError as exc:
        raise ValidationError(_pydantic_errors(exc, prefix, node), source=source) from None


def parse_resource(obj: dict[str, Any], *, source: str | None = None) -> AnyResource:
    """Validate one resource given as its wire-form mapping; the model class is chosen by ``kind``."""
    return _parse(obj, source)


StoredResource: TypeAlias = LifelongLearningJob | Dataset | Model | Worker
"""Any object a GM store holds: a resource kind, or the GM's internal ``Worker``."""


def parse_stored(obj: Any, *, source: str | None = None) -> StoredResource:
    """The model of an object read back from a store (a resource, or a ``Worker`` of
    ``lifelong.io/v1``); ``ValidationError`` names every field the models refuse."""
    if isinstance(obj, dict) and obj.get("kind") == Worker.KIND:
        try:
            return Worker.model_validate(obj, **_WIRE_NAMES_ONLY)
        except pydantic.ValidationError as exc:
            raise ValidationError(_pydantic_errors(exc), source=source) from None
    return _parse(obj, source)


StoredT = TypeVar("StoredT", bound=StoredResource)


def parse_keeping_spec(before: StoredT, obj: Any) -> StoredT:
    """The model of ``obj``, a stored object whose spec the caller knows to be ``before``'s: as
    ``parse_stored``, except that the spec is ``before``'s instance, not validated again (models
    are read, never changed). For hot paths where the spec, most of an object, is known: what a
    store returned for a status write of ``before`` (which never changes the spec), or for an
    apply of the validated ``before``."""
    if not isinstance(obj, dict) or obj.get("kind") != before.kind or "spec" not in obj:
        raise ValidationError([("", f"not a {before.kind} with a spec")])
    try:
        parsed = cast(StoredT, type(before).model_validate({**obj, "spec": before.spec}, **_WIRE_NAMES_ONLY))
    except pydantic.ValidationError as exc:
        raise ValidationError(_pydantic_errors(exc)) from None
    return parsed


def _is_list(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("kind") == "List" and isinstance(obj.get("items"), list)


def _document_source(source: str | None, index: int, count: int, line: int | None) -> str | None:
    if count <= 1:
        return source
    where = f"document {index + 1}" + (f" (line {line})" if line is not None else "")
    return f"{source}, {where}" if source else where


def _items(obj: Any, source: str | None, node: Node | None) -> list[AnyResource]:
    """One document: a resource, or a Kubernetes ``List`` of them."""
    if _is_list(obj):
        return [_parse(item, source, ("items", i), node) for i, item in enumerate(obj["items"])]
    return [_parse(obj, source, (), node)]


def load_documents(text: str, source: str | None = None) -> list[AnyResource]:
    """Parse YAML (one or more ``---`` documents) or JSON (an object or an array) into resources.

    ``source`` (a file name, say) prefixes error messages. Empty documents are skipped; a
    Kubernetes ``kind: List`` is expanded. Raises ``ValidationError`` on the first document
    that fails, with all of that document's errors.
    """
    json_error: ValidationError | None = None
    if text.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            message = f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            json_error = ValidationError([("", message)], source=source)
        except ValueError:
            pass  # a duplicate key: the YAML parser below reports it with its line
        else:
            docs = data if isinstance(data, list) else [data]
            out: list[AnyResource] = []
            for i, doc in enumerate(docs):
                out.extend(_items(doc, _document_source(source, i, len(docs), None), None))
            return out
    try:
        from lifelong.common.api import kyaml

        documents = list(kyaml.documents(text, source))
    except ValidationError:
        # Not JSON and not YAML either: a JSON-looking text gets the JSON parser's complaint.
        if json_error is not None:
            raise json_error from None
        raise
    out = []
    for i, (doc, node) in enumerate(documents):
        if doc is None:
            continue
        line = node.start_mark.line + 1 if node is not None else None
        out.extend(_items(doc, _document_source(source, i, len(documents), line), node))
    return out


def load_file(path: str | Path) -> list[AnyResource]:
    """``load_documents`` of a file; the error source is the file's path."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        message = f"cannot read file: {exc.__class__.__name__}: {exc}"
        raise ValidationError([("", message)], source=str(p)) from None
    return load_documents(text, source=str(p))


# --------------------------------------------------------------------------------------------
# writing


def dump_resource(res: Resource[Any, Any]) -> dict[str, Any]:
    """The wire form: camelCase, no nulls (except inside pod templates, kept as given), JSON types."""
    return res.model_dump(mode="json", by_alias=True, exclude_none=True)


def dump_yaml(resources: Resource[Any, Any] | Iterable[Resource[Any, Any]]) -> str:
    """YAML text of one resource, or of several as ``---``-separated documents."""
    items = [resources] if isinstance(resources, Resource) else list(resources)
    import yaml

    from lifelong.common.api import kyaml

    return yaml.dump_all(
        [dump_resource(r) for r in items],
        Dumper=kyaml.Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
    )


def resource_key(res: Resource[Any, Any]) -> tuple[str, str, str]:
    """``(kind, namespace, name)`` of a resource."""
    return res.key
