"""Shared pieces of the ``sedna.io/v1alpha1`` models: the base config, ObjectMeta, names, times.

Wire form is camelCase (upstream Sedna's JSON); Python attributes are snake_case. Serialise
with ``dump_resource`` (``lifelong.common.api.loader``), i.e. ``by_alias=True,
exclude_none=True, mode="json"``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

GROUP = "sedna.io"
VERSION = "v1alpha1"
API_VERSION: Final = "sedna.io/v1alpha1"
DEFAULT_NAMESPACE = "default"

# DNS-1123, as Kubernetes checks object names (subdomain) and namespaces (label). Both rule
# out '/', '+', '#' and NUL, so a valid name is always a valid MQTT topic segment.
DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL_PATTERN = rf"^{_LABEL}$"
DNS1123_SUBDOMAIN_PATTERN = rf"^{_LABEL}(\.{_LABEL})*$"
_LABEL_RE = re.compile(DNS1123_LABEL_PATTERN)
_SUBDOMAIN_RE = re.compile(DNS1123_SUBDOMAIN_PATTERN)


def is_dns1123_subdomain(value: str) -> bool:
    """True if value may be a Kubernetes object name (and so a topic segment)."""
    return len(value) <= DNS1123_SUBDOMAIN_MAX and _SUBDOMAIN_RE.fullmatch(value) is not None


def is_dns1123_label(value: str) -> bool:
    """True if value may be a Kubernetes namespace name."""
    return len(value) <= DNS1123_LABEL_MAX and _LABEL_RE.fullmatch(value) is not None


def _check_subdomain(value: str) -> str:
    if not is_dns1123_subdomain(value):
        raise PydanticCustomError(
            "dns1123_subdomain",
            "must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', starting and "
            "ending with a letter or digit, at most 253 characters), got {value}",
            {"value": repr(value[:80])},
        )
    return value


def _check_label(value: str) -> str:
    if not is_dns1123_label(value):
        raise PydanticCustomError(
            "dns1123_label",
            "must be a DNS-1123 label (lowercase letters, digits and '-', starting and ending "
            "with a letter or digit, at most 63 characters), got {value}",
            {"value": repr(value[:80])},
        )
    return value


DnsSubdomain = Annotated[
    StrictStr,
    AfterValidator(_check_subdomain),
    WithJsonSchema(
        {"type": "string", "pattern": DNS1123_SUBDOMAIN_PATTERN, "maxLength": DNS1123_SUBDOMAIN_MAX}
    ),
]
"""A Kubernetes object name: DNS-1123 subdomain."""

DnsLabel = Annotated[
    StrictStr,
    AfterValidator(_check_label),
    WithJsonSchema({"type": "string", "pattern": DNS1123_LABEL_PATTERN, "maxLength": DNS1123_LABEL_MAX}),
]
"""A Kubernetes namespace name: DNS-1123 label."""


def _time_input(value: Any) -> Any:
    if not isinstance(value, str | datetime):
        raise PydanticCustomError("timestamp_type", "Input should be an RFC 3339 timestamp string")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_time_input)]
"""A metav1.Time: RFC 3339 with a time zone (``2024-05-01T12:00:00Z``)."""


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected.

    The fields' docstrings are the CRDs' descriptions; ``crdgen`` reads them from the source
    (pydantic's ``use_attribute_docstrings`` would re-parse every model's source at each start).
    A model's validator is built when the model is first used (``defer_build``), not at import:
    a process builds the few it uses, and a model nested in another is compiled into its
    parent's validator rather than on its own too (docs/performance.md, "Start-up CPU")."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        defer_build=True,
    )


class ObjectMeta(ApiModel):
    """A subset of Kubernetes' ObjectMeta; fields not listed here are kept as given."""

    model_config = ConfigDict(extra="allow")

    name: DnsSubdomain
    """Name of the resource, unique per kind and namespace."""
    namespace: DnsLabel = DEFAULT_NAMESPACE
    """Namespace of the resource; default when not given."""
    uid: StrictStr | None = None
    resource_version: StrictStr | None = None
    """Opaque version of the stored object, set by the store."""
    generation: StrictInt | None = None
    creation_timestamp: Timestamp | None = None
    deletion_timestamp: Timestamp | None = None
    labels: dict[StrictStr, StrictStr] | None = None
    annotations: dict[StrictStr, StrictStr] | None = None


SpecT = TypeVar("SpecT", bound=ApiModel)
StatusT = TypeVar("StatusT", bound=ApiModel)


class Resource(ApiModel, Generic[SpecT, StatusT]):
    """Base of the sedna.io/v1alpha1 kinds (TypeMeta + ObjectMeta + spec + status)."""

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ()
    MAX_NAME: ClassVar[int] = DNS1123_SUBDOMAIN_MAX
    """The longest ``metadata.name`` of this kind (shorter when names are derived from it)."""
    MAX_NAME_ON_KUBERNETES: ClassVar[int] = DNS1123_SUBDOMAIN_MAX
    """The longest name on Kubernetes, where more may be derived from it (the CRD says so)."""

    api_version: Literal["sedna.io/v1alpha1"] = API_VERSION
    kind: str
    metadata: ObjectMeta
    spec: SpecT
    status: StatusT | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def key(self) -> tuple[str, str, str]:
        """``(kind, namespace, name)``: what identifies the resource in a store and on the bus."""
        return (self.kind, self.metadata.namespace, self.metadata.name)
