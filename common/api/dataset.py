"""``Dataset`` of ``sedna.io/v1alpha1``: a file of samples on one edge node."""

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


class DatasetStatus(ApiModel):
    """DatasetStatus is the number of samples in the dataset and when it was last counted."""

    number_of_samples: StrictInt = Field(default=0, ge=0)
    update_time: Timestamp | None = None


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
