"""``LifelongLearningJob`` of ``sedna.io/v1alpha1``, with upstream Sedna's field names.

spec:
  dataset: {name, trainProb}
  trainSpec: {template, trigger: {checkPeriodSeconds, timer: {start, end},
                                  condition: {operator, threshold, metric}}}
  evalSpec: {template}
  deploySpec: {template}
  outputDir, credentialName
status:
  conditions: [{type, status, stage, lastHeartbeatTime, lastTransitionTime,
                reason, message, data}]
  startTime, completionTime, knowledgeBase
"""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, StrictFloat, StrictInt, StrictStr, WithJsonSchema
from pydantic_core import PydanticCustomError

from lifelong.common.api.meta import ApiModel, DnsSubdomain, Resource, Timestamp
from lifelong.common.api.template import PodTemplate, template_node_name
from lifelong.common.stages import ConditionType, Stage

TriggerOperator = Literal[">", ">=", "==", "=", "!=", "<=", "<", "gt", "ge", "eq", "ne", "le", "lt"]
"""Comparison operators of a trigger condition: symbols or their two-letter names."""

CANONICAL_OPERATOR: dict[str, str] = {
    ">": "gt",
    ">=": "ge",
    "==": "eq",
    "=": "eq",
    "!=": "ne",
    "<=": "le",
    "<": "lt",
    "gt": "gt",
    "ge": "ge",
    "eq": "eq",
    "ne": "ne",
    "le": "le",
    "lt": "lt",
}
"""Every accepted operator mapped to its two-letter name."""

TriggerMetric = Literal["num_of_samples"]

HHMM_PATTERN = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"
_HHMM_RE = re.compile(HHMM_PATTERN)


def _check_hhmm(value: str) -> str:
    if not _HHMM_RE.fullmatch(value):
        raise PydanticCustomError(
            "timer_format",
            "must be a time of day 'HH:MM' (00:00 to 23:59, or 24:00), got {value}",
            {"value": repr(value[:40])},
        )
    return value


HHMM = Annotated[
    StrictStr, AfterValidator(_check_hhmm), WithJsonSchema({"type": "string", "pattern": HHMM_PATTERN})
]
"""A time of day ``HH:MM``; ``24:00`` is the end of the day."""


def minute_of_day(hhmm: str) -> int:
    """ "02:30" -> 150; "24:00" -> 1440."""
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


class LLDataset(ApiModel):
    """The Dataset the job learns from."""

    name: DnsSubdomain
    """Name of a Dataset in the job's namespace."""
    train_prob: Annotated[StrictFloat, Field(ge=0, le=1)]
    """Share of new samples used for training (the rest for evaluation), in [0, 1]."""


class LLTimer(ApiModel):
    """A daily window [start, end], both ends included; wraps past midnight if start > end."""

    start: HHMM
    end: HHMM

    def contains(self, at: time) -> bool:
        """Whether the time of day ``at`` (minute resolution) lies in the window."""
        now = at.hour * 60 + at.minute
        start, end = minute_of_day(self.start), minute_of_day(self.end)
        if start <= end:
            return start <= now <= end
        return now >= start or now <= end


class LLCondition(ApiModel):
    """Fire when metric operator threshold holds, e.g. num_of_samples > 500."""

    operator: TriggerOperator
    threshold: StrictFloat
    metric: TriggerMetric

    @property
    def canonical_operator(self) -> str:
        """The operator's two-letter name: gt, ge, eq, ne, le or lt."""
        return CANONICAL_OPERATOR[self.operator]


class LLTrigger(ApiModel):
    """When the LC starts a training round: the condition holds inside the timer window."""

    check_period_seconds: Annotated[StrictInt, Field(ge=1)] | None = None
    """How often the LC checks the trigger, in seconds (60 when not given)."""
    timer: LLTimer | None = None
    condition: LLCondition


class LLTrainSpec(ApiModel):
    """LLTrainSpec describes the data an train worker should have."""

    template: PodTemplate
    trigger: LLTrigger


class LLEvalSpec(ApiModel):
    """LLEvalSpec describes the data an eval worker should have."""

    template: PodTemplate


class LLDeploySpec(ApiModel):
    """LLDeploySpec describes the deploy model to be updated."""

    template: PodTemplate


class LLJobSpec(ApiModel):
    """The desired state of a lifelong learning job."""

    dataset: LLDataset
    train_spec: LLTrainSpec
    eval_spec: LLEvalSpec
    deploy_spec: LLDeploySpec
    credential_name: DnsSubdomain | None = None
    """The credential (a Secret name) for outputDir."""
    output_dir: StrictStr = Field(min_length=1)
    """Where the job's artifacts (models, samples) go: a path or a storage URL."""

    def template_for(self, stage: Stage) -> dict[str, Any]:
        """The pod template of the worker that runs ``stage``."""
        if stage is Stage.TRAIN:
            return self.train_spec.template
        if stage is Stage.EVAL:
            return self.eval_spec.template
        return self.deploy_spec.template

    def node_names(self) -> list[str]:
        """The nodes named by the train, eval and deploy templates, each once, in that order."""
        nodes: list[str] = []
        for stage in (Stage.TRAIN, Stage.EVAL, Stage.DEPLOY):
            node = template_node_name(self.template_for(stage))
            if node is not None and node not in nodes:
                nodes.append(node)
        return nodes


ConditionStatus = Literal["True", "False", "Unknown"]


class LLJobCondition(ApiModel):
    """One observation of the job's state; conditions are appended, never edited."""

    type: ConditionType
    status: ConditionStatus = "True"
    stage: Stage
    last_heartbeat_time: Timestamp | None = None
    last_transition_time: Timestamp | None = None
    reason: StrictStr | None = None
    message: StrictStr | None = None
    data: StrictStr | None = None
    """JSON data related to this condition (e.g. a worker's output)."""


class AIModel(ApiModel):
    model_id: StrictStr = Field(alias="modelID")
    average_precision: StrictFloat = 0.0
    number_of_train_samples: StrictInt = 0


class AIModels(ApiModel):
    number_of_ai_models: StrictInt = Field(default=0, alias="numberOfAIModels")
    list_of_ai_models: list[AIModel] | None = Field(default=None, alias="listOfAIModels")


class AIClasses(ApiModel):
    number_of_ai_classes: StrictInt = Field(default=0, alias="numberOfAIClasses")
    list_of_ai_classes: list[StrictStr] | None = Field(default=None, alias="listOfAIClasses")


class Samples(ApiModel):
    number_of_labeled_unseen_sample: StrictInt = 0
    number_of_unseen_sample: StrictInt = 0


class KnowledgeBase(ApiModel):
    """What the job's knowledge base holds: models, classes and unseen samples."""

    ai_models: AIModels = Field(default_factory=AIModels, alias="AIModels")
    ai_classes: AIClasses = Field(default_factory=AIClasses, alias="AIClasses")
    samples: Samples = Field(default_factory=Samples)


class LLJobStatus(ApiModel):
    """LLJobStatus represents the current state of a lifelong learning job."""

    conditions: list[LLJobCondition] = Field(default_factory=list)
    """The job's conditions, oldest first; the last one is the current state."""
    knowledge_base: KnowledgeBase | None = None
    start_time: Timestamp | None = None
    """When the job was acknowledged by the GM."""
    completion_time: Timestamp | None = None
    """When the job was completed."""


class LifelongLearningJob(Resource[LLJobSpec, LLJobStatus]):
    """A lifelong learning job: train, evaluate and deploy a model as new edge data arrives."""

    KIND: ClassVar[str] = "LifelongLearningJob"
    PLURAL: ClassVar[str] = "lifelonglearningjobs"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("ll",)

    kind: Literal["LifelongLearningJob"] = "LifelongLearningJob"

    @property
    def conditions(self) -> list[LLJobCondition]:
        """The status conditions (empty when there is no status yet)."""
        return self.status.conditions if self.status is not None else []

    @property
    def last_condition(self) -> LLJobCondition | None:
        """The condition that drives the job, or None for a new job."""
        conditions = self.conditions
        return conditions[-1] if conditions else None
