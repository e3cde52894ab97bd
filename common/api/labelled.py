"""``LabelledSamples`` (``lifelong.io/v1``, internal, not a CRD): labelled samples for a Dataset.

The GM makes one per batch of samples labelled in the knowledge base (``lifelong kb label``) and
sends it down to the node of the Dataset the samples belong to; the LC appends its rows to the
Dataset's file (once per sample id, whatever is resent), reports how many it appended, and the
GM then deletes it and marks the samples delivered in the KB. The new rows count as new samples,
so the job's train trigger fires as for any other data. Shape (docs/protocol.md):

    apiVersion: lifelong.io/v1
    kind: LabelledSamples
    metadata: {name: <dataset>-<batch>, namespace, resourceVersion}
    spec: {job, dataset, labelColumn, samples: [{id, row, label}]}
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal

from pydantic import AfterValidator, Field, StrictStr

from lifelong.common.api.meta import ApiModel, DnsSubdomain, Resource
from lifelong.common.samples import MAX_SAMPLES_PER_POST, Label, SampleId, Scalar, check_row

LABELLED_API_VERSION: Final = "lifelong.io/v1"


class LabelledSample(ApiModel):
    """A labelled sample: its row as inference saw it, and the label a person gave it."""

    id: SampleId
    row: Annotated[dict[StrictStr, Scalar], AfterValidator(check_row)]
    label: Label


class LabelledSamplesSpec(ApiModel):
    job: DnsSubdomain
    """The LifelongLearningJob (same namespace) whose inference found the samples."""
    dataset: DnsSubdomain
    """The Dataset (same namespace) whose file the rows are appended to."""
    label_column: StrictStr | None = None
    """The column of a ``csv`` Dataset that holds the label (its first column when not given);
    a ``txt`` Dataset's line is the row's ``path`` then the label."""
    samples: list[LabelledSample] = Field(min_length=1, max_length=MAX_SAMPLES_PER_POST)


class LabelledSamplesStatus(ApiModel):
    appended: int | None = None


class LabelledSamples(Resource[LabelledSamplesSpec, LabelledSamplesStatus]):
    """A batch of labelled samples on its way to a Dataset's node (see the module's docstring)."""

    KIND: ClassVar[str] = "LabelledSamples"
    PLURAL: ClassVar[str] = "labelledsamples"

    api_version: Literal["lifelong.io/v1"] = LABELLED_API_VERSION  # type: ignore[assignment]
    kind: Literal["LabelledSamples"] = "LabelledSamples"
