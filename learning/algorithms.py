"""The library's default methods, registered under Sedna's type and method names.

Who uses it: ``LifelongLearning`` resolves its constructor's ``{"method": name, "param": {...}}``
through ``ClassFactory``; importing ``lifelong.learning`` registers these. Sedna's own defaults
are placeholders (every sample to task 0; the first half of a batch seen, the second unseen;
an update strategy that is not registered); these work:

=====================================  ==============  ==============================================
name (aliases)                         type            what it does
=====================================  ==============  ==============================================
TaskDefinitionByDataAttr               STP             one task per combination of the ``attribute``
                                                       values (Sedna's entry: values joined by ``_``)
DefaultTaskRelationDiscover            STP             one task group per task
TaskAllocationByDataAttr               STP             a sample goes to the group of its attribute
(TaskMiningByDataAttr,                                 values; ``None`` when no known task has them
TaskAllocationDefault)
DefaultTaskRemodeling                  STP             the samples of each allocated group together
DefaultInferenceIntegrate              STP             the groups' results back in the samples' order
SampleRegonitionDefault                UTD             unseen: attribute values no known task has, or
(SampleRecognitionByAttr,                              (with ``threshold``) a max ``predict_proba``
TaskAttrFilter, ModelProbeFilter)                      under it (ModelProbeFilter: 0.5 by default)
SampleReRegonitionDefault              UTD             training samples: seen (a known task's values)
                                                       or unseen (new values)
UnseenTaskAllocationDefault            UTP             an unseen sample goes to the known group whose
                                                       model is most confident on it
UpdateStrategyDefault                  KM              known task: retrain on its old and new samples;
(UpdateStrategyByFinetune: from the                    new task: create it (with transfer from the
old model)                                             best-scoring known group)
=====================================  ==============  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lifelong.learning.datasources import BaseDataSource
from lifelong.learning.registry import ClassFactory, ClassType

__all__ = [
    "DefaultInferenceIntegrate",
    "DefaultTaskRelationDiscover",
    "DefaultTaskRemodeling",
    "SampleReRegonitionDefault",
    "SampleRegonitionDefault",
    "Task",
    "TaskAllocationByDataAttr",
    "TaskDefinitionByDataAttr",
    "TaskGroup",
    "UnseenTaskAllocationDefault",
    "UpdateStrategyByFinetune",
    "UpdateStrategyDefault",
    "attribute_key",
    "attribute_list",
    "entry_of",
]


@dataclass
class Task:
    """A task: its ``entry``, its attribute values, its samples; after inference its
    ``result`` and the ``model`` (a ``GroupModel`` of ``lifelong.learning.lifelong``) used."""

    entry: str
    samples: BaseDataSource
    meta_attr: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    result: Any = None
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class TaskGroup:
    """Tasks that share one model."""

    entry: str
    tasks: list[Task]
    samples: BaseDataSource | None = None
    model: Any = None


def attribute_list(value: Any) -> list[str]:
    """``attribute`` as Sedna's examples give it: a list, or a string ``"a, b"``."""
    if value is None:
        return []
    if isinstance(value, str):
        return [a.strip() for a in value.split(",") if a.strip()]
    if isinstance(value, list | tuple):
        return [str(a) for a in value]
    raise ValueError(f"attribute must be a list of column names or a comma-separated string, got {value!r}")


def _part(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).replace("_", "-").replace(" ", "")


def attribute_key(attrs: dict[str, Any], names: list[str]) -> str:
    """The extractor's key of a sample: its values of ``names`` joined by ``_`` (Sedna's
    form: ``_`` inside a value becomes ``-``, spaces are removed)."""
    return "_".join(_part(attrs.get(n)) for n in names)


def entry_of(attrs: dict[str, Any], names: list[str]) -> str:
    return attribute_key(attrs, names) or "global"


def _with_features(samples: BaseDataSource, drop: list[str]) -> BaseDataSource:
    out = samples.subset(range(samples.num_examples()))
    out.x = samples.features(drop)
    out.columns = None if samples.columns is None else [c for c in samples.columns if c not in drop]
    out.meta_attr = samples.attributes(drop) if drop else samples.meta_attr
    out.rows = samples.rows
    out.label = samples.label
    return out


@ClassFactory.register(ClassType.STP)
class TaskDefinitionByDataAttr:
    """One task per combination of the values of ``attribute`` (columns of the data or keys of
    ``meta_attr``). Returns the tasks, the extractor ``{key: entry}`` and the samples with the
    attribute columns taken out of ``x`` (kept in ``meta_attr``)."""

    def __init__(self, **kwargs: Any) -> None:
        self.attribute = attribute_list(kwargs.get("attribute", []))

    def __call__(
        self, samples: BaseDataSource, **kwargs: Any
    ) -> tuple[list[Task], dict[str, str], BaseDataSource]:
        data = _with_features(samples, self.attribute)
        attrs = data.meta_attr or [{} for _ in range(data.num_examples())]
        keys = [attribute_key(a, self.attribute) if self.attribute else "global" for a in attrs]
        tasks: list[Task] = []
        extractor: dict[str, str] = {}
        for key in dict.fromkeys(keys):
            idx = [i for i, k in enumerate(keys) if k == key]
            entry = key or "global"
            extractor[key] = entry
            tasks.append(Task(entry=entry, samples=data.subset(idx), meta_attr=dict(attrs[idx[0]])))
        return tasks, extractor, data


@ClassFactory.register(ClassType.STP)
class DefaultTaskRelationDiscover:
    """Every task is its own group."""

    def __init__(self, **kwargs: Any) -> None:
        pass

    def __call__(self, tasks: list[Task]) -> list[TaskGroup]:
        return [TaskGroup(entry=t.entry, tasks=[t], samples=t.samples) for t in tasks]


@ClassFactory.register(ClassType.STP, alias="TaskMiningByDataAttr")
@ClassFactory.register(ClassType.STP, alias="TaskAllocationDefault")
@ClassFactory.register(ClassType.STP)
class TaskAllocationByDataAttr:
    """Each sample to the group its attribute values map to in the extractor (None: no known
    task has them). ``task_extractor`` is ``{key: entry}``; ``attribute`` the names, in order."""

    def __init__(self, task_extractor: dict[str, str] | None = None, **kwargs: Any) -> None:
        self.task_extractor = dict(task_extractor or {})
        self.attribute = attribute_list(kwargs.get("attribute", []))

    def __call__(self, samples: BaseDataSource) -> tuple[BaseDataSource, list[str | None]]:
        data = _with_features(samples, self.attribute)
        attrs = data.meta_attr or [{} for _ in range(data.num_examples())]
        if not self.attribute:
            only = next(iter(self.task_extractor.values()), None)
            return data, [only for _ in attrs]
        return data, [self.task_extractor.get(attribute_key(a, self.attribute)) for a in attrs]


@ClassFactory.register(ClassType.STP)
class DefaultTaskRemodeling:
    """The samples of each allocated group together (``inx`` keeps their positions)."""

    def __init__(self, models: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.models = models or {}

    def __call__(
        self, samples: BaseDataSource, mappings: list[str | None]
    ) -> tuple[list[BaseDataSource], list[Any]]:
        data: list[BaseDataSource] = []
        models: list[Any] = []
        for entry in dict.fromkeys(m for m in mappings if m is not None):
            idx = [i for i, m in enumerate(mappings) if m == entry]
            part = samples.subset(idx)  # its inx: the positions in the caller's samples
            data.append(part)
            models.append(self.models.get(entry))
        return data, models


@ClassFactory.register(ClassType.STP)
class DefaultInferenceIntegrate:
    """The tasks' results, back in the order of the samples."""

    def __init__(self, models: Any = None, **kwargs: Any) -> None:
        self.models = models

    def __call__(self, tasks: list[Task]) -> np.ndarray:
        pairs: dict[int, Any] = {}
        for task in tasks:
            for i, value in zip(getattr(task.samples, "inx", []), task.result, strict=False):
                pairs[i] = value
        return np.array([pairs[i] for i in sorted(pairs)], dtype=object) if pairs else np.array([])


class _KnowledgeUser:
    """Base of the methods that look at the knowledge in service: ``task_index`` is the
    ``Knowledge`` of ``lifelong.learning.lifelong`` (attributes, extractor, group models)."""

    def __init__(self, task_index: Any, **kwargs: Any) -> None:
        self.knowledge = task_index


@ClassFactory.register(ClassType.UTD, alias="SampleRecognitionByAttr")
@ClassFactory.register(ClassType.UTD, alias="TaskAttrFilter")
@ClassFactory.register(ClassType.UTD)
class SampleRegonitionDefault(_KnowledgeUser):
    """Unseen: a sample whose attribute values no known task has; with ``threshold`` also one
    whose allocated model's highest class probability is below it."""

    default_threshold: float | None = None

    def __init__(self, task_index: Any, estimator: Any = None, **kwargs: Any) -> None:
        super().__init__(task_index)
        value = kwargs.get("threshold", kwargs.get("confidence_threshold", self.default_threshold))
        self.threshold = None if value in (None, "") else float(value)

    def __call__(self, samples: BaseDataSource, **kwargs: Any) -> tuple[BaseDataSource, BaseDataSource]:
        seen, unseen = self.split(samples)
        return samples.subset(seen), samples.subset(unseen)

    def split(self, samples: BaseDataSource) -> tuple[list[int], list[int]]:
        """Positions of the seen and the unseen samples."""
        entries = self.knowledge.allocate(samples)
        unseen = {i for i, e in enumerate(entries) if e is None}
        if self.threshold is not None:
            confidence = self.knowledge.confidence(samples, entries)
            unseen |= {i for i, c in enumerate(confidence) if c is not None and c < self.threshold}
        seen = [i for i in range(len(entries)) if i not in unseen]
        return seen, sorted(unseen)


@ClassFactory.register(ClassType.UTD)
class ModelProbeFilter(SampleRegonitionDefault):
    """``SampleRegonitionDefault`` with the confidence test on (threshold 0.5 unless given)."""

    default_threshold = 0.5


@ClassFactory.register(ClassType.UTD)
class SampleReRegonitionDefault(_KnowledgeUser):
    """Training samples: seen (attribute values of a known task) and unseen (new values)."""

    def __call__(self, samples: BaseDataSource) -> tuple[BaseDataSource, BaseDataSource]:
        entries = self.knowledge.allocate(samples)
        seen = [i for i, e in enumerate(entries) if e is not None]
        unseen = [i for i, e in enumerate(entries) if e is None]
        return samples.subset(seen), samples.subset(unseen)


@ClassFactory.register(ClassType.UTP)
class UnseenTaskAllocationDefault:
    """An unseen sample goes to the known group whose model is most confident on it (the
    first group when no model gives probabilities)."""

    def __init__(self, task_extractor: Any = None, **kwargs: Any) -> None:
        self.knowledge = task_extractor

    def __call__(self, samples: BaseDataSource) -> tuple[BaseDataSource, list[str | None]]:
        return samples, self.knowledge.closest(samples)


@ClassFactory.register(ClassType.KM)
class UpdateStrategyDefault(_KnowledgeUser):
    """Decides what an update does with the new samples of one kind (``task_type``
    ``seen_task`` or ``unseen_task``): a known task is retrained on its old and new samples
    (``strategy: "retrain"``; ``finetune: true`` starts from its current model), samples with new
    attribute values become new tasks (``strategy: "create"``). Returns the tasks and
    ``{entry: {"strategy", "raw_data_update", "target_model_update", "task_attr_update"}}``."""

    default_finetune = False

    def __init__(self, task_index: Any, **kwargs: Any) -> None:
        super().__init__(task_index)
        finetune = kwargs.get("finetune")
        self.finetune = str(finetune).lower() == "true" if finetune is not None else self.default_finetune

    def __call__(
        self, samples: BaseDataSource, task_type: str = "seen_task"
    ) -> tuple[list[Task], dict[str, Any]]:
        names = self.knowledge.attributes
        data = _with_features(samples, names) if samples.num_examples() else samples
        attrs = data.meta_attr or [{} for _ in range(data.num_examples())]
        entries = self.knowledge.allocate(samples) if samples.num_examples() else []
        tasks: list[Task] = []
        strategies: dict[str, Any] = {}
        keys = [e if e is not None else entry_of(a, names) for e, a in zip(entries, attrs, strict=True)]
        for entry in dict.fromkeys(keys):
            idx = [i for i, k in enumerate(keys) if k == entry]
            known = entries[idx[0]] is not None
            task = Task(entry=entry, samples=data.subset(idx), meta_attr=dict(attrs[idx[0]]))
            tasks.append(task)
            strategies[entry] = {
                "strategy": "retrain" if known else "create",
                "raw_data_update": task.samples,
                "target_model_update": True,
                "task_attr_update": None if known else task.meta_attr,
                "finetune": self.finetune and known,
            }
        return tasks, strategies


@ClassFactory.register(ClassType.KM)
class UpdateStrategyByFinetune(UpdateStrategyDefault):
    """``UpdateStrategyDefault`` whose known tasks continue from their current model."""

    default_finetune = True
