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
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, time
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, StrictFloat, StrictInt, StrictStr, WithJsonSchema
from pydantic_core import PydanticCustomError

from lifelong.common.api.dataset import Dataset
from lifelong.common.api.meta import (
    DNS1123_LABEL_MAX,
    DNS1123_SUBDOMAIN_MAX,
    ApiModel,
    DnsSubdomain,
    ObjectMeta,
    Resource,
    Timestamp,
)
from lifelong.common.api.template import PodTemplate
from lifelong.common.stages import STAGE_ORDER, ConditionType, Stage
from lifelong.common.statemachine import MAX_RETRY_LIMIT, Condition, current_round

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
    """A daily window of local time, start and end included; wraps past midnight if start > end."""

    start: HHMM
    end: HHMM

    def contains(self, at: time | datetime) -> bool:
        """Whether the local time of day ``at`` lies in the window, as upstream Sedna's LC decides.

        The time of day is compared as ``HH:MM`` (minute resolution): with ``start <= end`` the
        window is ``start <= now <= end``, so ``00:00``-``24:00`` is the whole day and
        ``02:00``-``24:00`` includes ``23:59``; with ``start > end`` it wraps past midnight
        (``22:00``-``02:00``: ``now >= start or now <= end``); ``start == end`` is that one
        minute only.
        """
        now = at.hour * 60 + at.minute
        start, end = minute_of_day(self.start), minute_of_day(self.end)
        if start > end:
            return now >= start or now <= end
        return start <= now <= end


EQUALITY_EPSILON = 1e-6
"""Two values closer than this are equal (upstream Sedna's LC compares floats so)."""

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "eq": lambda a, b: abs(a - b) < EQUALITY_EPSILON,
    "ne": lambda a, b: abs(a - b) >= EQUALITY_EPSILON,
    "gt": lambda a, b: abs(a - b) >= EQUALITY_EPSILON and a > b,
    "ge": lambda a, b: abs(a - b) < EQUALITY_EPSILON or a > b,
    "lt": lambda a, b: abs(a - b) >= EQUALITY_EPSILON and a < b,
    "le": lambda a, b: abs(a - b) < EQUALITY_EPSILON or a < b,
}


class LLCondition(ApiModel):
    """Fire when metric operator threshold holds, e.g. num_of_samples > 500 (equal: within 1e-6)."""

    operator: TriggerOperator
    threshold: StrictFloat
    metric: TriggerMetric

    @property
    def canonical_operator(self) -> str:
        """The operator's two-letter name: gt, ge, eq, ne, le or lt."""
        return CANONICAL_OPERATOR[self.operator]

    def holds(self, value: float) -> bool:
        """Whether ``value operator threshold`` holds. Equality means ``|value - threshold| <
        1e-6``: ``gt`` is "not equal and greater", ``ge`` "equal or greater", and so on."""
        return _COMPARE[self.canonical_operator](float(value), self.threshold)


DEFAULT_CHECK_PERIOD_SECONDS = 60
"""How often the LC checks a trigger without ``checkPeriodSeconds`` (upstream's default)."""


class LLTrigger(ApiModel):
    """When the LC starts a training round: the condition holds inside the timer window."""

    check_period_seconds: Annotated[StrictInt, Field(ge=1)] | None = None
    """How often the LC checks the trigger, in seconds (60 when not given)."""
    timer: LLTimer | None = None
    condition: LLCondition

    @property
    def period(self) -> int:
        """``checkPeriodSeconds``, or its default of 60."""
        return self.check_period_seconds or DEFAULT_CHECK_PERIOD_SECONDS

    def due(self, now_mono: float, last_check: float | None) -> bool:
        """Is it time to check the trigger (never checked, or a period since the last check)?"""
        return last_check is None or now_mono - last_check >= self.period

    def in_window(self, local_now: time | datetime) -> bool:
        """Is the local time inside the timer window (always, without a timer)?"""
        return self.timer is None or self.timer.contains(local_now)

    def condition_holds(self, num_of_samples: int) -> bool:
        """Does the condition hold for this many new samples (never for none)?"""
        return num_of_samples > 0 and self.condition.holds(num_of_samples)

    def fires(
        self, num_of_samples: int, local_now: time | datetime, now_mono: float, last_check: float | None
    ) -> bool:
        """All the rules at once: the check is due, inside the window, the condition holds.

        Pure: the caller passes the node's local time and a monotonic "now" in seconds. The
        trigger is checked at once and then every ``checkPeriodSeconds`` on the monotonic clock
        (a jump of the wall clock neither hastens nor delays a check); the timer reads the local
        wall clock. A round never fires with zero new samples, whatever the condition.
        """
        return (
            self.due(now_mono, last_check)
            and self.in_window(local_now)
            and self.condition_holds(num_of_samples)
        )


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

    @property
    def templates(self) -> dict[Stage, dict[str, Any]]:
        """The pod template of each stage."""
        return {stage: self.template_for(stage) for stage in STAGE_ORDER}

    def worker_node(self, stage: Stage) -> str | None:
        """The node ``stage``'s worker runs on: its template's ``spec.nodeName`` (None if unset)."""
        return worker_node(self.template_for(stage))

    def worker_nodes(self) -> list[tuple[str, str | None]]:
        """(field path, node) of each stage's worker, train first: ``spec.trainSpec.template.spec.
        nodeName`` and its value (None if unset), for messages that name the field."""
        return [
            (f"spec.{_SPEC_FIELD[stage]}.template.spec.nodeName", self.worker_node(stage))
            for stage in STAGE_ORDER
        ]

    def deciding_node(self, stage: Stage, dataset_node: str | None) -> str | None:
        """The node whose LC turns ``stage``'s ``Waiting`` into ``Ready`` (see ``deciding_node``)."""
        return deciding_node(self.templates, stage, dataset_node)

    def node_roles(self, dataset_node: str | None) -> list[tuple[str, list[NodeRole]]]:
        """Every node the job involves with its roles (see ``node_roles``)."""
        return node_roles(self.templates, dataset_node)

    def node_names(self, dataset_node: str | None = None) -> list[str]:
        """The nodes that must hold the job (see ``node_roles``), each once, in that order."""
        return [node for node, _ in self.node_roles(dataset_node)]


# -- facts derived from a job ------------------------------------------------------------------
# The one place that says which nodes a job involves and in which role. They read the stages'
# pod templates only, so that they also apply to a stored job's wire form (``wire_templates``)
# whose other fields the GM does not need to check again.

NodeRole = Literal["dataset", "train", "eval", "deploy"]
"""Why a node takes part in a job: it holds the Dataset, or runs a stage's worker."""

_STAGE_ROLE: dict[Stage, NodeRole] = {Stage.TRAIN: "train", Stage.EVAL: "eval", Stage.DEPLOY: "deploy"}
_SPEC_FIELD: dict[Stage, str] = {Stage.TRAIN: "trainSpec", Stage.EVAL: "evalSpec", Stage.DEPLOY: "deploySpec"}


def wire_templates(job: Mapping[str, Any]) -> dict[Stage, Mapping[str, Any]]:
    """The pod template of each stage of a job in wire form (camelCase); ``{}`` where missing."""
    spec = job.get("spec")
    out: dict[Stage, Mapping[str, Any]] = {}
    for stage, field in _SPEC_FIELD.items():
        stage_spec = spec.get(field) if isinstance(spec, Mapping) else None
        template = stage_spec.get("template") if isinstance(stage_spec, Mapping) else None
        out[stage] = template if isinstance(template, Mapping) else {}
    return out


def worker_node(template: Mapping[str, Any] | None) -> str | None:
    """The node a pod template runs on: its ``spec.nodeName``, None if unset or empty."""
    pod_spec = template.get("spec") if template is not None else None
    node = pod_spec.get("nodeName") if isinstance(pod_spec, Mapping) else None
    return node if isinstance(node, str) and node else None


def deciding_node(
    templates: Mapping[Stage, Mapping[str, Any]], stage: Stage, dataset_node: str | None
) -> str | None:
    """The node whose LC turns ``stage``'s ``Waiting`` into ``Ready``.

    Train: the Dataset's node (it holds the samples and fires the trigger); Eval and Deploy: the
    stage's template ``nodeName``, by default the Dataset's node.
    """
    if stage is Stage.TRAIN:
        return dataset_node
    return worker_node(templates.get(stage)) or dataset_node


def node_roles(
    templates: Mapping[Stage, Mapping[str, Any]], dataset_node: str | None
) -> list[tuple[str, list[NodeRole]]]:
    """Every node a job involves with its roles, each node once: the Dataset's node (role
    ``dataset``) first, then the nodes of the train, eval and deploy templates (the deploy node
    included, which upstream Sedna forgets)."""
    roles: dict[str, list[NodeRole]] = {}
    if dataset_node:
        roles[dataset_node] = ["dataset"]
    for stage in STAGE_ORDER:
        node = worker_node(templates.get(stage))
        if node is not None:
            roles.setdefault(node, []).append(_STAGE_ROLE[stage])
    return list(roles.items())


def node_names(templates: Mapping[Stage, Mapping[str, Any]], dataset_node: str | None) -> list[str]:
    """The nodes that must hold a job (see ``node_roles``), each once, in that order."""
    return [node for node, _ in node_roles(templates, dataset_node)]


def job_conditions(raw_conditions: Iterable[Mapping[str, Any]] | None) -> list[Condition]:
    """A job's ``status.conditions`` (camelCase mappings) as the state machine's conditions.

    Raises ``ValidationError`` naming the field of the first malformed one.
    """
    return [Condition.from_dict(item) for item in raw_conditions or ()]


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


WORKER_ROUND_DIGITS = 10
"""Digits of round number a worker name leaves room for (rounds up to 9,999,999,999)."""

WORKER_RETRY_SUFFIX = f"-retry{MAX_RETRY_LIMIT}"
"""The longest suffix of a retried worker's name (``-retry{n}``, n up to the highest retry limit)."""

MAX_JOB_NAME = (
    DNS1123_SUBDOMAIN_MAX
    - len(f"-{Stage.DEPLOY.value.lower()}-")
    - WORKER_ROUND_DIGITS
    - len(WORKER_RETRY_SUFFIX)
)
"""The longest job name (226): its longest derived name, the worker
``{job}-deploy-{round}-retry{n}`` (a Worker object in standalone mode, a Pod on Kubernetes),
must stay a valid object name of at most 253 characters."""


def _check_job_name(value: str) -> str:
    if len(value) > MAX_JOB_NAME:
        raise PydanticCustomError(
            "job_name_too_long",
            "is {length} characters; a LifelongLearningJob name may have at most {limit}, so that "
            "the names of its workers (<name>-deploy-<round>-retry<n>) stay within {max} characters",
            {"length": len(value), "limit": MAX_JOB_NAME, "max": DNS1123_SUBDOMAIN_MAX},
        )
    return value


class LLJobMeta(ObjectMeta):
    """The metadata of a job: its name leaves room for the names derived from it."""

    name: Annotated[DnsSubdomain, AfterValidator(_check_job_name)]
    """Name of the job, at most 226 characters (see ``MAX_JOB_NAME``)."""


class LifelongLearningJob(Resource[LLJobSpec, LLJobStatus]):
    """A lifelong learning job: train, evaluate and deploy a model as new edge data arrives."""

    KIND: ClassVar[str] = "LifelongLearningJob"
    PLURAL: ClassVar[str] = "lifelonglearningjobs"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("ll",)
    MAX_NAME: ClassVar[int] = MAX_JOB_NAME
    MAX_NAME_ON_KUBERNETES: ClassVar[int] = DNS1123_LABEL_MAX
    """Its worker Pods carry the job's name as a label value (``lifelonglearningjob.sedna.io/name``,
    as upstream Sedna's do), and a label value has at most 63 characters."""

    kind: Literal["LifelongLearningJob"] = "LifelongLearningJob"
    metadata: LLJobMeta

    def node_names(self, dataset: Dataset | None) -> list[str]:
        """The nodes that must hold the job, given its Dataset (None: not found): the Dataset's
        node first, then the train, eval and deploy nodes, each once (see ``node_roles``)."""
        return self.spec.node_names(dataset.spec.node_name if dataset is not None else None)

    @property
    def conditions(self) -> list[LLJobCondition]:
        """The status conditions (empty when there is no status yet)."""
        return self.status.conditions if self.status is not None else []

    @property
    def last_condition(self) -> LLJobCondition | None:
        """The condition that drives the job, or None for a new job."""
        conditions = self.conditions
        return conditions[-1] if conditions else None

    @property
    def history(self) -> list[Condition]:
        """The conditions as the state machine reads them (``lifelong.common.statemachine``)."""
        return job_conditions(
            c.model_dump(by_alias=True, exclude_none=True, mode="json") for c in self.conditions
        )

    @property
    def round(self) -> int:
        """The current training round: how many times the trigger fired (0: never)."""
        return current_round(self.history)

    @property
    def state(self) -> tuple[Stage, ConditionType]:
        """The current stage and condition type; a job without conditions is ``Train/Waiting``
        (what the GM's ``Created`` appends)."""
        last = self.last_condition
        return (last.stage, last.type) if last is not None else (Stage.TRAIN, ConditionType.WAITING)
