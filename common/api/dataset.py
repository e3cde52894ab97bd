"""``Dataset`` of ``sedna.io/v1alpha1``: a file of samples on one edge node.

Its status adds one thing to Sedna's (``numberOfSamples``, ``updateTime``): a ``Ready``
condition saying whether the edge can read the file, and why not (docs/protocol.md, "report").
The GM writes it: ``WaitingForNode`` while the dataset's node has not said hello, then what the
node's LC reports (``Counted``, ``FileMissing``, ``Unreadable``, ``UnsupportedFormat``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictInt, StrictStr

from lifelong.common.api.meta import ApiModel, DnsSubdomain, Resource, Timestamp

DatasetFormat = Literal["txt", "csv"]


class DatasetSpec(ApiModel):
    """DatasetSpec is a description of a dataset."""

    url: StrictStr = Field(min_length=1)
    """Where the dataset file is, as the edge node sees it (a path or a storage URL)."""
    format: DatasetFormat
    """txt (one sample per line) or csv (a header line, then one sample per line)."""
    node_name: DnsSubdomain
    """The edge node that holds the dataset and whose LC monitors it."""
    credential_name: DnsSubdomain | None = None
    """The credential (a Secret name) for url, if it needs one."""


ConditionStatus = Literal["True", "False", "Unknown"]

DATASET_READY = "Ready"
"""The type of the Dataset's one condition: whether its node reads the file."""

REASON_WAITING_FOR_NODE = "WaitingForNode"
"""The dataset's node has not said hello to the GM (since the GM forgot it, if it did)."""
REASON_COUNTED = "Counted"
REASON_FILE_MISSING = "FileMissing"
REASON_UNREADABLE = "Unreadable"
REASON_UNSUPPORTED = "UnsupportedFormat"


class DatasetCondition(ApiModel):
    """What the GM knows of the dataset's file: the ``Ready`` condition, replaced (not appended)
    whenever it changes."""

    type: StrictStr
    status: ConditionStatus
    reason: StrictStr | None = None
    message: StrictStr | None = None
    last_transition_time: Timestamp | None = None


class DatasetStatus(ApiModel):
    """DatasetStatus is the number of samples in the dataset and when it was last counted."""

    number_of_samples: StrictInt = Field(default=0, ge=0)
    update_time: Timestamp | None = None
    conditions: list[DatasetCondition] | None = None
    """The ``Ready`` condition: ``WaitingForNode`` (set by the GM), or what the node reported
    (``Counted``, ``FileMissing``, ``Unreadable``, ``UnsupportedFormat``)."""


class Dataset(Resource[DatasetSpec, DatasetStatus]):
    """Dataset describes the data that a dataset resource should have."""

    KIND: ClassVar[str] = "Dataset"
    PLURAL: ClassVar[str] = "datasets"

    kind: Literal["Dataset"] = "Dataset"


def dataset_node(dataset: Mapping[str, Any] | None) -> str | None:
    """The node of a Dataset in wire form (its ``spec.nodeName``), None if unset or empty: for
    code that holds the wire form (the CLI's answers from the GM); a model has ``spec.node_name``."""
    spec = dataset.get("spec") if dataset is not None else None
    node = spec.get("nodeName") if isinstance(spec, Mapping) else None
    return node if isinstance(node, str) and node else None
