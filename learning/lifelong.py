"""``LifelongLearning``: Sedna's lifelong-learning API for a worker, with defaults that work.

Who uses it: the workers of a LifelongLearningJob (``examples/lifelong/``: ``train.py`` calls
``train``, which becomes ``update`` once ``HAS_COMPLETED_INITIAL_TRAINING`` is true; ``eval.py``
calls ``evaluate``; ``infer.py`` calls ``inference``). docs/writing-workers.md ("The
lifelong-learning library") is the user's guide.

A round's knowledge is a task index (``lifelong.common.kb.TaskIndex``): task groups, each with its
tasks (attribute values), sample count, model (URL, metrics, classes) and the transfer it started
from; the extractor maps a sample's attribute values to its group. ``train``/``update`` upload each
group's model and samples to the KB (``lifelong.learning.knowledge``), post the index and report the
index's URL to the LC as the model, so that the next round's ``CLOUD_KB_INDEX`` and the Eval and
Deploy workers' ``MODEL_URLS`` point at it (``cloud/controllers/lifelonglearning/workerenv.py``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import operator as op
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.common.kb import Extractor, TaskIndex, TaskModel, TaskSet, Transfer, UnseenSample
from lifelong.common.kb import Task as IndexTask
from lifelong.common.kb import TaskGroup as IndexGroup
from lifelong.learning import algorithms as _algorithms  # registers the defaults
from lifelong.learning.algorithms import Task, TaskGroup, attribute_key, attribute_list
from lifelong.learning.config import BaseConfig, Context, parse_param, round_of
from lifelong.learning.datasources import BaseDataSource
from lifelong.learning.estimator import EstimatorAdapter, _key
from lifelong.learning.knowledge import KBError, KnowledgeBase
from lifelong.learning.registry import ClassFactory, ClassType
from lifelong.learning.reporting import SampleShipper, now_rfc3339, post_worker_info, sample_id

log = logging.getLogger(__name__)

__all__ = ["Knowledge", "LifelongLearning"]

_ = _algorithms
MIN_TRAIN_SAMPLE = 10
"""A task group with fewer training samples shares a model trained on all (Sedna's rule);
``MIN_TRAIN_SAMPLE`` overrides."""
TRANSFER_SAMPLES = 20
"""How many of a new task's first labelled samples choose its transfer source."""

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": op.gt,
    "<": op.lt,
    "=": op.eq,
    "==": op.eq,
    ">=": op.ge,
    "<=": op.le,
}


def _labels(y: Any) -> np.ndarray:
    """Labels as scikit-learn wants them: ints when every label is one, else text."""
    values = [_key(v) for v in np.asarray(y, dtype=object).tolist()]
    if any(v is None for v in values):
        raise ValueError("some training samples have no label")
    if all(isinstance(v, int) for v in values):
        return np.asarray(values, dtype=np.int64)
    return np.asarray([str(v) for v in values])


def _plain_label(value: Any) -> int | str:
    key = _key(value)
    return key if isinstance(key, int | str) else str(key)


def _ids(x: np.ndarray, y: np.ndarray) -> list[str]:
    """A content id per training sample (features and label), to merge old and new samples."""
    out = []
    for xi, yi in zip(x, y, strict=True):
        data = np.asarray(xi, dtype=float).tobytes() + str(_key(yi)).encode()
        out.append(hashlib.sha256(data).hexdigest()[:32])
    return out


class GroupModel:
    """A task group's model in use: its entry, its URL and the adapter holding it."""

    def __init__(self, entry: str, adapter: EstimatorAdapter, url: str = "") -> None:
        self.entry = entry
        self.adapter = adapter
        self.url = url


class Knowledge:
    """A task index as the library uses it: the extractor, the groups and their models (loaded
    when first needed). ``serving``: groups the evaluation dropped (``deployed: false``) count as
    unknown, so their samples are treated as unseen."""

    def __init__(
        self,
        index: TaskIndex,
        kb: KnowledgeBase,
        estimator: Any,
        *,
        attributes: list[str] | None = None,
        allocation: tuple[str, dict[str, Any]] = ("TaskAllocationByDataAttr", {}),
        serving: bool = False,
    ) -> None:
        self.index = index
        self.kb = kb
        self.estimator = estimator
        extractor = index.seen_task.extractor or Extractor()
        self.attributes = list(extractor.attributes) or list(attributes or [])
        self.groups = {g.entry: g for g in index.seen_task.task_groups}
        usable = {e for e, g in self.groups.items() if g.deployed or not serving}
        self.map = {k: v for k, v in extractor.map.items() if v in usable}
        if not self.map:  # an index without an extractor: each group's tasks give the keys
            for g in index.seen_task.task_groups:
                if g.entry in usable:
                    for t in g.tasks or []:
                        self.map[attribute_key(dict(t.attrs), self.attributes)] = g.entry
        self.allocation = allocation
        self._models: dict[str, GroupModel] = {}

    def allocate(self, samples: BaseDataSource) -> list[str | None]:
        name, param = self.allocation
        method = ClassFactory.get_cls(ClassType.STP, name)(
            task_extractor=self.map, **{"attribute": self.attributes, **param}
        )
        _, allocations = method(samples)
        return list(allocations)

    def features(self, samples: BaseDataSource) -> np.ndarray:
        return samples.features(self.attributes)

    def model(self, entry: str) -> GroupModel | None:
        if entry in self._models:
            return self._models[entry]
        group = self.groups.get(entry)
        if group is None or group.model is None:
            return None
        data = self.kb.read(group.model.url)
        adapter = EstimatorAdapter(self.estimator)
        try:
            import joblib

            adapter.model = joblib.load(io.BytesIO(data))
        except Exception:  # not a joblib file: the estimator's own format, loaded from a file
            with tempfile.NamedTemporaryFile(suffix=f".{group.model.format}", delete=False) as fh:
                fh.write(data)
            adapter.load(Path(fh.name))
            os.unlink(fh.name)
        self._models[entry] = GroupModel(entry, adapter, group.model.url)
        return self._models[entry]

    def confidence(self, samples: BaseDataSource, entries: list[str | None]) -> list[float | None]:
        """Each sample's highest class probability under its group's model (None: no model or
        no probabilities)."""
        out: list[float | None] = [None] * len(entries)
        x = self.features(samples)
        for entry in {e for e in entries if e is not None}:
            model = self.model(entry)
            idx = [i for i, e in enumerate(entries) if e == entry]
            proba = model.adapter.predict_proba(x[idx]) if model else None
            if proba is not None:
                for i, p in zip(idx, proba.max(axis=1), strict=True):
                    out[i] = float(p)
        return out

    def closest(self, samples: BaseDataSource) -> list[str | None]:
        """For each sample, the known group whose model is the most confident on it."""
        x = self.features(samples)
        best: list[tuple[float, str | None]] = [(-1.0, None)] * len(x)
        for entry in dict.fromkeys(self.map.values()):
            model = self.model(entry)
            if model is None:
                continue
            proba = model.adapter.predict_proba(x)
            scores = proba.max(axis=1) if proba is not None else np.zeros(len(x))
            best = [b if b[0] >= s else (float(s), entry) for b, s in zip(best, scores, strict=True)]
        return [entry for _, entry in best]


class LifelongLearning:
    """Sedna's ``LifelongLearning``: the same constructor (each method ``{"method": name,
    "param": {...}}`` or None for the default), ``train``, ``update``, ``evaluate`` and
    ``inference`` with Sedna's return values. ``estimator``, ``task_mining`` and
    ``unseen_task_detect`` (the names of Sedna's older releases, which its atcii example still
    passes) are taken as ``seen_estimator``, ``task_allocation`` and ``unseen_sample_recognition``."""

    def __init__(  # noqa: PLR0917 - Sedna's constructor, positional as there
        self,
        seen_estimator: Any = None,
        unseen_estimator: Any = None,
        task_definition: dict[str, Any] | None = None,
        task_relationship_discovery: dict[str, Any] | None = None,
        task_allocation: dict[str, Any] | None = None,
        task_remodeling: dict[str, Any] | None = None,
        inference_integrate: dict[str, Any] | None = None,
        task_update_decision: dict[str, Any] | None = None,
        unseen_task_allocation: dict[str, Any] | None = None,
        unseen_sample_recognition: dict[str, Any] | None = None,
        unseen_sample_re_recognition: dict[str, Any] | None = None,
        **legacy: Any,
    ) -> None:
        seen_estimator = seen_estimator if seen_estimator is not None else legacy.pop("estimator", None)
        task_allocation = task_allocation or legacy.pop("task_mining", None)
        unseen_sample_recognition = unseen_sample_recognition or legacy.pop("unseen_task_detect", None)
        unknown = sorted(
            k for k, v in legacy.items() if k not in ("estimator", "task_mining", "unseen_task_detect")
        )
        if unknown:
            raise TypeError(f"LifelongLearning() got unexpected arguments: {', '.join(unknown)}")
        if seen_estimator is None:
            raise TypeError("LifelongLearning() needs seen_estimator (an estimator instance or class)")
        self.seen_estimator = seen_estimator
        self.unseen_estimator = unseen_estimator
        self.task_definition = self._method(ClassType.STP, task_definition, "TaskDefinitionByDataAttr")
        self.attribute = attribute_list(self.task_definition[1].get("attribute", []))
        definition_param = {"attribute": self.attribute}
        self.task_relationship_discovery = self._method(
            ClassType.STP, task_relationship_discovery, "DefaultTaskRelationDiscover"
        )
        alloc = self._method(ClassType.STP, task_allocation, "TaskAllocationByDataAttr")
        self.task_allocation = (alloc[0], {**definition_param, **alloc[1]})
        self.task_remodeling = self._method(ClassType.STP, task_remodeling, "DefaultTaskRemodeling")
        self.inference_integrate = self._method(
            ClassType.STP, inference_integrate, "DefaultInferenceIntegrate"
        )
        self.task_update_decision = self._method(ClassType.KM, task_update_decision, "UpdateStrategyDefault")
        self.unseen_task_allocation = self._method(
            ClassType.UTP, unseen_task_allocation, "UnseenTaskAllocationDefault"
        )
        self.unseen_sample_recognition = self._method(
            ClassType.UTD, unseen_sample_recognition, "SampleRegonitionDefault"
        )
        self.unseen_sample_re_recognition = self._method(
            ClassType.UTD, unseen_sample_re_recognition, "SampleReRegonitionDefault"
        )
        self.kb = KnowledgeBase.from_env()
        self.knowledge: Knowledge | None = None
        self.shipper: SampleShipper | None = None
        self.tasks_detail: list[Task] = []
        self.index_url = ""

    @staticmethod
    def _method(type_name: str, config: dict[str, Any] | None, default: str) -> tuple[str, dict[str, Any]]:
        """A constructor argument as (name, param), its name checked against the registry now,
        so a misspelt method fails at start with the known names listed."""
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise TypeError(f"a method must be given as {{'method': name, 'param': {{...}}}}, got {config!r}")
        name = config.get("method") or default
        ClassFactory.get_cls(type_name, name)
        return str(name), parse_param(config.get("param"))

    # -- the job's identity -------------------------------------------------------------------------
    @staticmethod
    def _job() -> str:
        return f"{BaseConfig.namespace}/{BaseConfig.job_name}"

    @staticmethod
    def _round() -> int | None:
        return round_of(BaseConfig.worker_name)

    def _min_train_sample(self) -> int:
        return int(Context.get_parameters("MIN_TRAIN_SAMPLE", MIN_TRAIN_SAMPLE))

    # -- train ---------------------------------------------------------------------------------------
    def train(
        self,
        train_data: BaseDataSource,
        valid_data: BaseDataSource | None = None,
        post_process: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Learn one model per task group from ``train_data``; once the job has completed its
        initial training (``HAS_COMPLETED_INITIAL_TRAINING``), ``update`` instead. Returns
        ``{group entry: its training metrics}`` (or what ``post_process`` makes of it)."""
        if BaseConfig.has_completed_initial_training():
            return self.update(train_data, valid_data=valid_data, post_process=post_process, **kwargs)
        name, param = self.task_definition
        tasks, extractor, data = ClassFactory.get_cls(ClassType.STP, name)(**param)(train_data)
        rname, rparam = self.task_relationship_discovery
        groups = ClassFactory.get_cls(ClassType.STP, rname)(**rparam)(tasks)
        built = self._fit_initial(groups, data, **kwargs)
        mapping = {k: e for k, e in extractor.items()}
        res: dict[str, Any] = {g.entry: dict(g.model.metrics) if g.model else {} for g in built}
        self._publish(built, mapping, stage="train")
        if valid_data is not None:
            res = self._score(valid_data)[0]
        return self._callback(post_process, res)

    def _fit_initial(self, groups: list[TaskGroup], data: BaseDataSource, **kwargs: Any) -> list[IndexGroup]:
        minimum = self._min_train_sample()
        built: list[IndexGroup] = []
        shared: tuple[str, TaskModel] | None = None
        for group in groups:
            samples = group.samples or group.tasks[0].samples
            if samples.num_examples() >= minimum:
                adapter = EstimatorAdapter(self.seen_estimator)
                x, y = np.asarray(samples.x, dtype=float), _labels(samples.y)
                res = adapter.fit(x, y, **kwargs)
                model = self._store_model(group.entry, adapter, x, y, res)
            else:
                log.info(
                    "task group %s has %d samples (< %d): it shares the global model",
                    group.entry,
                    samples.num_examples(),
                    minimum,
                )
                if shared is None:
                    adapter = EstimatorAdapter(self.seen_estimator)
                    x, y = np.asarray(data.x, dtype=float), _labels(data.y)
                    res = adapter.fit(x, y, **kwargs)
                    shared = ("global", self._store_model("global", adapter, x, y, res))
                model = shared[1]
            built.append(self._index_group(group, model, samples.num_examples()))
        return built

    def _index_group(
        self, group: TaskGroup, model: TaskModel, n: int, transfer: Transfer | None = None
    ) -> IndexGroup:
        tasks = [
            IndexTask(entry=t.entry, attrs=t.meta_attr, samples=t.samples.num_examples()) for t in group.tasks
        ]
        return IndexGroup(entry=group.entry, tasks=tasks, samples=n, model=model, transfer=transfer)

    def _store_model(
        self, entry: str, adapter: EstimatorAdapter, x: np.ndarray, y: np.ndarray, res: dict[str, Any]
    ) -> TaskModel:
        """Upload a group's model and its samples; the index's model entry."""
        folder = f"{BaseConfig.namespace}/{BaseConfig.job_name}/{self._round() or 0}"
        with tempfile.TemporaryDirectory() as tmp:
            path = adapter.save(Path(tmp) / f"{entry}.pkl")
            url = self.kb.put_file(f"{folder}/{entry}.pkl", path.read_bytes())
        buf = io.BytesIO()
        np.savez(buf, x=x, y=np.asarray(json.dumps([_plain_label(v) for v in y])))
        self.kb.put_file(f"{folder}/{entry}.samples.npz", buf.getvalue())
        metrics = {"samples": float(len(y)), "train_accuracy": round(adapter.score(x, y), 4)}
        metrics.update(
            {k: float(v) for k, v in res.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        )
        classes = adapter.classes
        return TaskModel(
            url=url,
            format="pkl",
            metrics=metrics,
            classes=[_plain_label(c) for c in classes] if classes else None,
        )

    def _old_samples(self, model: TaskModel) -> tuple[np.ndarray, np.ndarray] | None:
        """A group's samples as stored next to its model (None when they cannot be read)."""
        if not model.url.endswith(".pkl"):
            return None
        try:
            data = self.kb.read(model.url[: -len(".pkl")] + ".samples.npz")
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return np.asarray(npz["x"], dtype=float), _labels(json.loads(str(npz["y"])))
        except (KBError, OSError, ValueError, KeyError) as exc:
            log.warning(
                "the samples of %s cannot be read (%s): it learns from the new ones only", model.url, exc
            )
            return None

    def _publish(self, groups: list[IndexGroup], mapping: dict[str, str], stage: str) -> str:
        index = TaskIndex(
            job=self._job(),
            round=self._round(),
            create_time=now_rfc3339(),
            seen_task=TaskSet(
                task_groups=groups, extractor=Extractor(attributes=self.attribute, map=mapping)
            ),
        )
        self.index_url = self.kb.post_index(index)
        log.info("task index of %d groups stored at %s", len(groups), self.index_url)
        metrics = {g.entry: {k: v for k, v in (g.model.metrics if g.model else {}).items()} for g in groups}
        post_worker_info(
            stage,
            [{"url": self.index_url, "format": "json", "metrics": metrics}],
            owner_info={"tasks": [g.entry for g in groups]},
        )
        return self.index_url

    # -- update --------------------------------------------------------------------------------------
    def update(
        self,
        train_data: BaseDataSource,
        valid_data: BaseDataSource | None = None,
        post_process: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Update the knowledge of ``CLOUD_KB_INDEX`` with ``train_data``: known tasks keep
        what they learnt and learn their new samples, new tasks are created (each starting from
        the known group that scores best on its first labelled samples). Returns the new task
        index (a mapping), as Sedna's does."""
        url = BaseConfig.cloud_kb_index
        if not url:
            log.warning("CLOUD_KB_INDEX is empty: training from scratch")
            os.environ["HAS_COMPLETED_INITIAL_TRAINING"] = "false"
            return self.train(train_data, valid_data=valid_data, post_process=post_process, **kwargs)
        knowledge = self._load(url)
        rr_name, rr_param = self.unseen_sample_re_recognition
        seen, unseen = ClassFactory.get_cls(ClassType.UTD, rr_name)(knowledge, **rr_param)(train_data)
        ud_name, ud_param = self.task_update_decision
        decision = ClassFactory.get_cls(ClassType.KM, ud_name)(knowledge, **ud_param)
        groups = {g.entry: g for g in knowledge.index.seen_task.task_groups}
        mapping = dict((knowledge.index.seen_task.extractor or Extractor()).map) or dict(knowledge.map)
        old_attrs = list(knowledge.attributes)
        for task_type, part in (("seen_task", seen), ("unseen_task", unseen)):
            if part.num_examples() == 0:
                continue
            tasks, strategies = decision(part, task_type=task_type)
            for task in tasks:
                strategy = strategies.get(task.entry, {})
                if strategy.get("strategy") == "create" or task.entry not in groups:
                    groups[task.entry] = self._create(task, knowledge, **kwargs)
                    mapping[attribute_key(task.meta_attr, old_attrs)] = task.entry
                else:
                    groups[task.entry] = self._retrain(
                        groups[task.entry], task, knowledge, strategy, **kwargs
                    )
        self.attribute = old_attrs or self.attribute
        built = list(groups.values())
        self._publish(built, mapping, stage="train")
        index = knowledge.index.model_copy(update={"seen_task": TaskSet(task_groups=built)}).to_json()
        index["url"] = self.index_url
        return self._callback(post_process, index)

    def _retrain(
        self, group: IndexGroup, task: Task, knowledge: Knowledge, strategy: dict[str, Any], **kwargs: Any
    ) -> IndexGroup:
        x_new, y_new = np.asarray(task.samples.x, dtype=float), _labels(task.samples.y)
        old = self._old_samples(group.model) if group.model else None
        if old is not None:
            x_all, y_all = (
                np.concatenate([old[0], x_new]),
                np.concatenate([old[1].astype(object), y_new.astype(object)]),
            )
        else:
            x_all, y_all = x_new, y_new.astype(object)
        first: dict[str, int] = {}
        for i, sid in enumerate(_ids(x_all, y_all)):
            first.setdefault(sid, i)
        unique = sorted(first.values())
        x, y = x_all[unique], _labels(y_all[unique])
        adapter = EstimatorAdapter(self.seen_estimator)
        current = knowledge.model(group.entry) if strategy.get("finetune") else None
        res: dict[str, Any] = {}
        if current is not None:
            adapter.warm_from(current.adapter, x, y)
        else:
            res = adapter.fit(x, y, **kwargs)
        model = self._store_model(group.entry, adapter, x, y, res)
        tasks = (
            [t.model_copy(update={"samples": len(y)}) for t in group.tasks]
            if len(group.tasks) == 1
            else group.tasks
        )
        return group.model_copy(update={"model": model, "samples": len(y), "tasks": tasks, "deployed": True})

    def _create(self, task: Task, knowledge: Knowledge, **kwargs: Any) -> IndexGroup:
        x, y = np.asarray(task.samples.x, dtype=float), _labels(task.samples.y)
        n_first = int(Context.get_parameters("TRANSFER_SAMPLES", TRANSFER_SAMPLES))
        source, ratio = None, 0.0
        for entry in dict.fromkeys(knowledge.groups):
            candidate = knowledge.model(entry)
            if candidate is None:
                continue
            score = candidate.adapter.score(x[:n_first], y[:n_first])
            if source is None or score > ratio:
                source, ratio = candidate, score
        adapter = EstimatorAdapter(self.seen_estimator)
        transfer = None
        res: dict[str, Any] = {}
        if source is not None and adapter.warm_from(source.adapter, x, y) != "none":
            transfer = Transfer.model_validate(
                {"from": source.entry, "ratio": round(min(max(ratio, 0.0), 1.0), 4)}
            )
            log.info(
                "new task %s starts from %s (it scores %.3f on its first samples)",
                task.entry,
                source.entry,
                ratio,
            )
        elif adapter.model is None:
            res = adapter.fit(x, y, **kwargs)
        model = self._store_model(task.entry, adapter, x, y, res)
        group = TaskGroup(entry=task.entry, tasks=[task], samples=task.samples)
        return self._index_group(group, model, len(y), transfer)

    # -- evaluate ------------------------------------------------------------------------------------
    def evaluate(
        self,
        data: BaseDataSource,
        metrics: Any = None,
        metrics_param: Any = None,
        post_process: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Score each task group of ``MODEL_URLS``'s index on ``data``, post the scores to the KB,
        mark groups whose score fails ``model_threshold``/``operator`` as not deployed (a new
        index version, reported to the LC) and return the scores over all samples."""
        url = (BaseConfig.model_urls or "").split(",")[0].strip()
        if not url:
            raise ValueError("MODEL_URLS is empty: nothing to evaluate")
        knowledge = self._load(url)
        overall, details = self._score(data, metrics, metrics_param, knowledge=knowledge)
        threshold = float(kwargs.get("model_threshold", Context.get_parameters("model_threshold", 0.1)))
        operator = str(kwargs.get("operator", Context.get_parameters("operator", ">")))
        if operator not in OPERATORS:
            log.warning("operator %r is not one of %s: '>' is used", operator, " ".join(OPERATORS))
            operator = ">"
        compare = OPERATORS[operator]
        drop = {t.entry for t in details if not all(compare(float(v), threshold) for v in t.scores.values())}
        for entry in sorted(drop):
            log.warning(
                "task group %s is not deployed: its scores %s fail %s %s",
                entry,
                details and next(t.scores for t in details if t.entry == entry),
                operator,
                threshold,
            )
        scores = {t.entry: {k: float(v) for k, v in t.scores.items()} for t in details}
        self.kb.post_metrics(self._job(), self._round(), "eval", scores)
        groups = []
        for g in knowledge.index.seen_task.task_groups:
            update: dict[str, Any] = {"deployed": g.entry not in drop}
            if g.model is not None and g.entry in scores:
                update["model"] = g.model.model_copy(
                    update={"metrics": {**g.model.metrics, **scores[g.entry]}}
                )
            groups.append(g.model_copy(update=update))
        index = knowledge.index.model_copy(
            update={
                "seen_task": knowledge.index.seen_task.model_copy(update={"task_groups": groups}),
                "create_time": now_rfc3339(),
            }
        )
        self.index_url = self.kb.post_index(index)
        post_worker_info(
            "eval",
            [{"url": self.index_url, "format": "json", "metrics": {"all": overall, **scores}}],
            owner_info={"dropped": sorted(drop)},
        )
        return self._callback(post_process, overall)

    def _score(
        self,
        data: BaseDataSource,
        metrics: Any = None,
        metrics_param: Any = None,
        knowledge: Knowledge | None = None,
    ) -> tuple[dict[str, float], list[Task]]:
        knowledge = knowledge or self._load(self.index_url)
        functions = _metric_functions(metrics)
        param = (
            parse_param(metrics_param) if not isinstance(metrics_param, str) else _loose_param(metrics_param)
        )
        entries = knowledge.allocate(data)
        x = knowledge.features(data)
        y = _labels(data.y)
        details: list[Task] = []
        all_true: list[Any] = []
        all_pred: list[Any] = []
        for entry in dict.fromkeys(e for e in entries if e is not None):
            idx = [i for i, e in enumerate(entries) if e == entry]
            model = knowledge.model(entry)
            if model is None:
                continue
            pred = _labels(model.adapter.predict(x[idx]))
            truth = y[idx]
            task = Task(entry=entry, samples=data.subset(idx), model=model, result=pred)
            task.scores = {name: float(fn(truth, pred, **param)) for name, fn in functions.items()}
            details.append(task)
            all_true.extend(truth.tolist())
            all_pred.extend(pred.tolist())
        skipped = sum(1 for e in entries if e is None)
        if skipped:
            log.info("%d evaluation samples belong to no known task and are not scored", skipped)
        overall = (
            {name: float(fn(_labels(all_true), _labels(all_pred), **param)) for name, fn in functions.items()}
            if all_true
            else {}
        )
        self.tasks_detail = details
        return overall, details

    # -- inference -----------------------------------------------------------------------------------
    def load(self, index_url: str | None = None) -> Knowledge:
        """Load the index to serve (``MODEL_URLS``'s first URL unless given); call it again to
        serve a new one."""
        url = index_url or (BaseConfig.model_urls or "").split(",")[0].strip()
        if not url:
            raise ValueError("MODEL_URLS is empty: no task index to serve")
        self.knowledge = self._load(url, serving=True)
        return self.knowledge

    def inference(
        self,
        data: BaseDataSource,
        post_process: Any = None,
        unseen_sample_postprocess: Any = None,
        **kwargs: Any,
    ) -> tuple[np.ndarray, bool | list[bool], list[Task]]:
        """Predict ``data``. Returns the predictions (in the samples' order), whether each sample
        is unseen (one bool for one sample, as Sedna's; else a list) and the tasks used. Unseen
        samples are posted to the LC (``unseen_sample_postprocess``, a function, replaces that)."""
        knowledge = self.knowledge or self.load()
        n = data.num_examples()
        results: list[Any] = [None] * n
        unseen_flags = [False] * n
        tasks: list[Task] = []
        name, param = self.unseen_sample_recognition
        recognise = ClassFactory.get_cls(ClassType.UTD, name)(
            knowledge, estimator=self.seen_estimator, **param
        )
        data.inx = None
        seen, unseen = recognise(data)
        callback = self._callback_fn(post_process)
        if seen.num_examples():
            entries = knowledge.allocate(seen)
            rm_name, rm_param = self.task_remodeling
            models = {e: knowledge.model(e) for e in set(entries) if e is not None}
            parts, part_models = ClassFactory.get_cls(ClassType.STP, rm_name)(models=models, **rm_param)(
                seen, entries
            )
            x_seen = knowledge.features(seen)
            base = seen.inx or list(range(seen.num_examples()))
            for part, model in zip(parts, part_models, strict=True):
                if model is None:
                    continue
                rel = [base.index(i) for i in (part.inx or [])]
                pred = model.adapter.predict(x_seen[rel])
                if callback is not None:
                    pred = callback(pred, part)
                tasks.append(Task(entry=model.entry, samples=part, model=model, result=pred))
            ig_name, ig_param = self.inference_integrate
            merged = ClassFactory.get_cls(ClassType.STP, ig_name)(models=models, **ig_param)(tasks)
            order = sorted(i for t in tasks for i in (t.samples.inx or []))
            for i, value in zip(order, merged, strict=False):
                results[i] = value
        if unseen.num_examples():
            for i in unseen.inx or []:
                unseen_flags[i] = True
            found = self._unseen(knowledge, unseen, callback)
            tasks.extend(found[1])
            for i, value in zip(unseen.inx or [], found[0], strict=True):
                results[i] = value
            if callable(unseen_sample_postprocess):
                unseen_sample_postprocess(unseen)
            else:
                self._ship(knowledge, data, unseen, found[0], found[2], found[3])
        res = np.asarray([_plain_label(r) if r is not None else None for r in results], dtype=object)
        is_unseen: bool | list[bool] = unseen_flags[0] if n == 1 else unseen_flags
        return res, is_unseen, tasks

    def _unseen(
        self, knowledge: Knowledge, unseen: BaseDataSource, callback: Callable[..., Any] | None
    ) -> tuple[list[Any], list[Task], list[float | None], list[str | None]]:
        ua_name, ua_param = self.unseen_task_allocation
        _, entries = ClassFactory.get_cls(ClassType.UTP, ua_name)(task_extractor=knowledge, **ua_param)(
            unseen
        )
        x = knowledge.features(unseen)
        preds: list[Any] = [None] * len(entries)
        confidence: list[float | None] = [None] * len(entries)
        tasks: list[Task] = []
        if self.unseen_estimator is not None and hasattr(self.unseen_estimator, "predict"):
            preds = list(self.unseen_estimator.predict(x))
            return preds, tasks, confidence, list(entries)
        for entry in dict.fromkeys(e for e in entries if e is not None):
            model = knowledge.model(entry)
            if model is None:
                continue
            idx = [i for i, e in enumerate(entries) if e == entry]
            pred = model.adapter.predict(x[idx])
            proba = model.adapter.predict_proba(x[idx])
            part = unseen.subset(idx)
            if callback is not None:
                pred = callback(pred, part)
            for j, i in enumerate(idx):
                preds[i] = pred[j]
                confidence[i] = float(proba[j].max()) if proba is not None else None
            tasks.append(Task(entry=entry, samples=part, model=model, result=pred))
        return preds, tasks, confidence, list(entries)

    def _ship(  # noqa: PLR0917 - private, called once
        self,
        knowledge: Knowledge,
        data: BaseDataSource,
        unseen: BaseDataSource,
        preds: list[Any],
        confidence: list[float | None],
        entries: list[str | None],
    ) -> None:
        attrs_all = (
            data.attributes(knowledge.attributes)
            if knowledge.attributes
            else [{} for _ in range(data.num_examples())]
        )
        samples = []
        when = now_rfc3339()
        for j, i in enumerate(unseen.inx or []):
            row = data.row(i)
            attrs = attrs_all[i]
            conf = confidence[j]
            try:
                samples.append(
                    UnseenSample(
                        id=sample_id(row, attrs),
                        row=row,
                        attrs=attrs,
                        predicted=None if preds[j] is None else _plain_label(preds[j]),
                        confidence=None if conf is None else min(max(conf, 0.0), 1.0),
                        task=entries[j],
                        observed_at=when,
                    )
                )
            except ValueError as exc:
                log.warning("unseen sample %d cannot be posted: %s", i, exc)
        if samples:
            if self.shipper is None:
                self.shipper = SampleShipper()
            self.shipper.add(samples)

    # -- helpers -------------------------------------------------------------------------------------
    def _load(self, url: str, serving: bool = False) -> Knowledge:
        index = self.kb.read_index(url)
        return Knowledge(
            index,
            self.kb,
            self.seen_estimator,
            attributes=self.attribute,
            allocation=self.task_allocation,
            serving=serving,
        )

    @staticmethod
    def _callback_fn(post_process: Any) -> Callable[..., Any] | None:
        if post_process is None:
            return None
        if callable(post_process):
            return post_process  # type: ignore[no-any-return]
        return ClassFactory.get_cls(ClassType.CALLBACK, post_process)  # type: ignore[no-any-return]

    def _callback(self, post_process: Any, value: Any) -> Any:
        fn = self._callback_fn(post_process)
        return fn(value) if fn is not None else value


def _loose_param(text: str) -> dict[str, Any]:
    """``metrics_param`` as Sedna's examples write it, JSON or ``{'average': 'micro'}``."""
    try:
        return parse_param(text)
    except ValueError:
        return parse_param(text.replace("'", '"'))


def _metric_functions(metrics: Any) -> dict[str, Callable[..., float]]:
    """Metric functions by name: a callable, a name of ``sklearn.metrics``, a list or a mapping
    of them; accuracy when none is given."""
    from sklearn import metrics as sk

    def resolve(value: Any) -> Callable[..., float]:
        if callable(value):
            return value  # type: ignore[no-any-return]
        fn = getattr(sk, str(value), None)
        if not callable(fn):
            raise ValueError(f"metric {value!r} is not a function of sklearn.metrics")
        return fn  # type: ignore[no-any-return]

    if metrics is None:
        return {"accuracy": sk.accuracy_score}
    if callable(metrics):
        return {getattr(metrics, "__name__", "metric"): metrics}
    if isinstance(metrics, str):
        return {metrics: resolve(metrics)}
    if isinstance(metrics, dict):
        return {str(k): resolve(v) for k, v in metrics.items()}
    if isinstance(metrics, list | tuple | set):
        return {getattr(m, "__name__", str(m)): resolve(m) for m in metrics}
    raise ValueError(f"metrics must be a function, a name, a list or a mapping, got {type(metrics).__name__}")
