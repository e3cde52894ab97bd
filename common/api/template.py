"""Pod templates (a Kubernetes PodTemplateSpec), kept exactly as the user wrote them.

A ``PodTemplate`` field holds a plain ``dict``: unknown fields anywhere inside survive a round
trip unchanged (nulls included). Validation checks only what lifelong itself reads:

    spec.containers         a non-empty list of mappings
    spec.nodeName           a DNS-1123 subdomain, if given (it becomes a topic segment)
    containers[].name/image strings, if given
    containers[].command/args   lists of strings, if given
    containers[].workingDir     a string, if given (the worker's directory)
    containers[].env        a list of {name: string, value: string (optional), ...}, if given

The helpers below read the first container, as the edge-process runtime runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import (
    ConfigDict,
    Field,
    GetPydanticSchema,
    PlainSerializer,
    StrictStr,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from lifelong.common.api.meta import ApiModel, DnsSubdomain


class _Open(ApiModel):
    model_config = ConfigDict(extra="allow")


class EnvVarCheck(_Open):
    """An environment variable of a container (valueFrom and others are kept as given)."""

    name: StrictStr
    value: StrictStr | None = None


class ContainerCheck(_Open):
    """A container of a pod template; only the fields lifelong reads are checked."""

    name: StrictStr | None = None
    image: StrictStr | None = None
    command: list[StrictStr] | None = None
    args: list[StrictStr] | None = None
    working_dir: StrictStr | None = None
    env: list[EnvVarCheck] | None = None


class PodSpecCheck(_Open):
    """The pod spec of a template; only the fields lifelong reads are checked."""

    node_name: DnsSubdomain | None = None
    """The node the worker runs on."""
    containers: list[ContainerCheck] = Field(min_length=1)


class PodTemplateCheck(_Open):
    """A Kubernetes PodTemplateSpec, kept as given; unknown fields are preserved."""

    spec: PodSpecCheck


_LEAVES = frozenset({str, int, float, bool, type(None)})


def json_copy(value: Any) -> Any:
    """A copy of a JSON-like tree: mappings become dicts and lists or tuples lists (as JSON has
    them), each copied; the leaves (str, int, float, bool, None: immutable) are shared. What
    ``copy.deepcopy`` gives for a parsed document, several times faster; a template is copied
    every time a job is parsed or dumped, on every report and upsert."""
    kind = type(value)
    if kind is dict:
        return {k: json_copy(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [json_copy(v) for v in value]
    if kind in _LEAVES:
        return value
    if isinstance(value, Mapping):
        return {k: json_copy(v) for k, v in value.items()}
    return value


def _keep_as_given(value: Any, handler: ValidatorFunctionWrapHandler) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise PydanticCustomError("dict_type", "Input should be a mapping")
    handler(value)  # validates (errors carry the full field path); the result is discarded
    copied: dict[str, Any] = json_copy(value)
    return copied


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    # A copy, so that a dumped mapping never aliases the model's own template.
    copied: dict[str, Any] = json_copy(value)
    return copied


PodTemplate = Annotated[
    dict[str, Any],
    GetPydanticSchema(lambda _tp, handler: handler(PodTemplateCheck)),
    WrapValidator(_keep_as_given),
    PlainSerializer(_copy, return_type=dict[str, Any]),
]
"""A pod template field: validated lightly, stored and serialised exactly as given."""


def first_container(template: Mapping[str, Any]) -> dict[str, Any]:
    """The first container of a (validated) template."""
    containers = template.get("spec", {}).get("containers") or []
    if not containers:
        raise ValueError("pod template has no containers")
    first: dict[str, Any] = containers[0]
    return first


def template_node_name(template: Mapping[str, Any]) -> str | None:
    """spec.nodeName of the template, or None."""
    node = template.get("spec", {}).get("nodeName")
    return node if isinstance(node, str) else None


def template_image(template: Mapping[str, Any]) -> str | None:
    image = first_container(template).get("image")
    return image if isinstance(image, str) else None


def template_command(template: Mapping[str, Any]) -> list[str]:
    return list(first_container(template).get("command") or [])


def template_args(template: Mapping[str, Any]) -> list[str]:
    return list(first_container(template).get("args") or [])


def template_env(template: Mapping[str, Any]) -> dict[str, str]:
    """Plain ``name: value`` variables of the first container, in order.

    Entries with ``valueFrom`` (secrets, field refs) have no literal value and are left out;
    a variable without ``value`` is the empty string, as in Kubernetes.
    """
    env: dict[str, str] = {}
    for item in first_container(template).get("env") or []:
        if "valueFrom" in item and item.get("value") is None:
            continue
        env[item["name"]] = item.get("value") or ""
    return env


@dataclass(frozen=True, slots=True)
class WorkerTemplate:
    """What the edge-process runtime needs from a pod template (its first container)."""

    node_name: str | None
    container_name: str | None
    image: str | None
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_template(cls, template: Mapping[str, Any]) -> WorkerTemplate:
        container = first_container(template)
        name = container.get("name")
        return cls(
            node_name=template_node_name(template),
            container_name=name if isinstance(name, str) else None,
            image=template_image(template),
            command=template_command(template),
            args=template_args(template),
            env=template_env(template),
        )
