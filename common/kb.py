"""The knowledge base's shared shapes: unseen samples and the versioned task index.

Who uses it: the KB service (``lifelong.cloud.kb``) stores and serves them, the worker library
(``lifelong.learning``) writes a task index and posts unseen samples, the LC's worker API takes
unseen samples from workers and ships them upstream, and the GM hands them to the KB. One model
per shape, here, so the four agree. docs/knowledge-base.md describes them for users.

Wire names: an unseen sample is camelCase like every protocol body. The task index keeps the
snake_case names of Sedna's index (``seen_task``, ``task_groups``, ``create_time``), so a reader
of Sedna's documentation recognises it, and adds ``version`` (of this schema), ``job`` and
``round``.

Policy as for the protocol bodies (``lifelong.common.messages``): a wrong type is refused, never
coerced, with an error naming the field; an unknown field is ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictStr

from lifelong.common.messages import Body, Rfc3339
from lifelong.common.samples import (
    MAX_SAMPLES_PER_POST,
    Confidence,
    Count,
    Label,
    SampleId,
    Scalar,
    check_row,
)

INDEX_SCHEMA_VERSION = 1
"""``version`` of the task index that this module writes and reads."""

__all__ = [
    "INDEX_SCHEMA_VERSION",
    "MAX_SAMPLES_PER_POST",
    "Extractor",
    "LabelledSamplesReport",
    "TaskGroup",
    "TaskIndex",
    "TaskModel",
    "TaskSet",
    "Transfer",
    "UnseenSample",
    "UnseenSamples",
]


class UnseenSample(Body):
    """One sample that inference on the edge found no known task for.

    ``row`` is the sample as a line of its Dataset: column -> value for a ``csv`` Dataset (the
    label column is what labelling fills in), ``{"path": ...}`` for a ``txt`` one. ``attrs`` are
    the data attributes the library's task definition uses (a camera, a season); ``predicted``
    and ``confidence`` what the model in service guessed, ``task`` the known task it came
    closest to, if any.
    """

    WHAT: ClassVar[str] = "unseen sample"
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"predicted", "confidence", "task", "observed_at"})
    id: SampleId
    row: Annotated[dict[StrictStr, Scalar], AfterValidator(check_row)]
    attrs: dict[StrictStr, Scalar] = Field(default_factory=dict)
    predicted: Label | None = None
    confidence: Confidence | None = None
    task: StrictStr | None = None
    observed_at: Rfc3339 | None = None


class UnseenSamples(Body):
    """What a worker posts to the LC (``POST /lifelong/v1/jobs/{ns}/{job}/samples``), what the
    LC ships upstream (kind ``UnseenSamples``, under the job's namespace and name) and what the
    GM hands to the KB: up to ``MAX_SAMPLES_PER_POST`` samples of one job."""

    WHAT: ClassVar[str] = "unseen samples"
    samples: list[UnseenSample] = Field(min_length=1, max_length=MAX_SAMPLES_PER_POST)
    worker: StrictStr | None = None


# -- the task index ----------------------------------------------------------------------------------


class IndexModel(BaseModel):
    """Base of the task index's parts: snake_case names as Sedna's index, unknown fields ignored,
    wrong types refused. Built when first used (``defer_build``), as most processes never do."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, defer_build=True)


class TaskModel(IndexModel):
    """The model trained for a task group: where it is, its format and its scores."""

    url: StrictStr = Field(min_length=1)
    format: StrictStr = "pkl"
    metrics: dict[StrictStr, StrictFloat] = Field(default_factory=dict)
    classes: list[Label] | None = None


class Task(IndexModel):
    """One task: the data attribute values that define it and how many samples it was given."""

    entry: StrictStr = Field(min_length=1)
    attrs: dict[StrictStr, Scalar] = Field(default_factory=dict)
    samples: Count = 0


class Transfer(IndexModel):
    """Where a task group's model started from: the task group whose model scored best on the
    new task's first labelled samples, and that score (``ratio``, in [0, 1])."""

    source: StrictStr = Field(alias="from", min_length=1)
    ratio: Annotated[StrictFloat, Field(ge=0.0, le=1.0)]

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, populate_by_name=True)


class TaskGroup(IndexModel):
    """Tasks that share one model."""

    entry: StrictStr = Field(min_length=1)
    tasks: list[Task] = Field(default_factory=list)
    samples: Count = 0
    model: TaskModel | None = None
    transfer: Transfer | None = None
    deployed: bool = True


class Extractor(IndexModel):
    """Maps a sample's attribute values, joined by ``_`` in the order of ``attributes``, to the
    entry of its task group (Sedna's extractor maps ``"<attr1>_<attr2>"`` to a group)."""

    attributes: list[StrictStr] = Field(default_factory=list)
    map: dict[StrictStr, StrictStr] = Field(default_factory=dict)


class TaskSet(IndexModel):
    task_groups: list[TaskGroup] = Field(default_factory=list)
    extractor: Extractor | None = None


class TaskIndex(IndexModel):
    """The task index a training round produces (the KB keeps every version)."""

    version: Literal[1] = 1
    job: StrictStr | None = None
    """``namespace/name`` of the job whose round made it."""
    round: Count | None = None
    create_time: Rfc3339 | None = None
    seen_task: TaskSet = Field(default_factory=TaskSet)
    unseen_task: TaskSet = Field(default_factory=TaskSet)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class LabelledSamplesReport(Body):
    """``report`` on ``up/LabelledSamples/{ns}/{name}``: the LC appended the batch's rows to the
    Dataset's file (``appended`` new ones; ``duplicates`` it had appended before; ``skipped``
    ones that cannot be a line of that file, e.g. a value holding a line break: logged on the
    node and never appended, so the batch is done all the same)."""

    WHAT: ClassVar[str] = "LabelledSamples report"
    appended: Count
    duplicates: Count = 0
    skipped: Count = 0
