"""``Model`` of ``sedna.io/v1alpha1``: a trained model and its metrics."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, StrictStr

from lifelong.common.api.meta import ApiModel, Resource, Timestamp


class Metric(ApiModel):
    """Metric is one named value of a model (both strings, as upstream)."""

    key: StrictStr
    value: StrictStr


class ModelSpec(ApiModel):
    """ModelSpec is a description of a model."""

    url: StrictStr = Field(min_length=1)
    """Where the model is stored."""
    format: StrictStr = Field(min_length=1)
    """The model's file format, e.g. pkl, pb, pth."""


class ModelStatus(ApiModel):
    """ModelStatus is when the model was last updated and its metrics."""

    update_time: Timestamp | None = None
    metrics: list[Metric] | None = None


class Model(Resource[ModelSpec, ModelStatus]):
    """Model describes the data that a model resource should have."""

    KIND: ClassVar[str] = "Model"
    PLURAL: ClassVar[str] = "models"

    kind: Literal["Model"] = "Model"
