"""The knowledge base itself: ``LocalKnowledgeBase``, over its tables and its files.

Who calls it: the KB's HTTP app (``lifelong.cloud.kb.app``, for ``lifelong kb serve`` or a KB the
GM runs beside it) and, in process, the GM through the ``KnowledgeBase`` Protocol
(``lifelong.cloud.kb.base``). Everything the routes of docs/knowledge-base.md do is a method
here; the app only parses HTTP and maps errors to statuses.

Input is checked here, whoever calls: a job is ``namespace/name`` (two DNS-1123 names), a task
index is ``lifelong.common.kb.TaskIndex``, samples are ``UnseenSample``, labels are ``Label``.
What is refused raises ``KBRefused`` (or a subclass whose ``http_status`` says 403, 404 or 413)
with a message naming what is wrong; nothing is changed then. A file store that cannot be reached
(an S3 bucket, ``lifelong.cloud.kb.s3``) raises ``KBFilesDown`` (503).

Sedna's ``/update`` body is a pickle: loading one runs whatever code its author put in it, so
``sedna_update`` refuses it unless the KB was made with ``allow_pickle`` (docs/knowledge-base.md,
"Security").
"""

from __future__ import annotations

import io
import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pydantic
from pydantic import Field, StrictFloat, StrictStr, TypeAdapter

from lifelong.cloud.kb.base import KBRefused, SampleState, StoredSample
from lifelong.cloud.kb.files import (
    BadPath,
    FileMissing,
    FileStore,
    FilesUnavailable,
    LocalFiles,
    TooLarge,
    check_path,
)
from lifelong.cloud.kb.store import KBStore, SampleRow, StoreFull, UnknownSamples
from lifelong.common.api.lifelonglearningjob import KnowledgeBase as KBStatus
from lifelong.common.api.loader import format_path
from lifelong.common.errors import InvalidBody
from lifelong.common.kb import TaskIndex, UnseenSample, UnseenSamples
from lifelong.common.samples import Label, SampleId
from lifelong.common.sqlite import Database
from lifelong.common.statemachine import parse_time

log = logging.getLogger(__name__)

SEDNA_INDEX_FILE = "index.pkl"
"""Where Sedna's ``/update`` keeps the pickle it was given (Sedna's name), served back by
``/file/download?files=index.pkl``."""
SEDNA_JOB = "sedna/default"
"""The job a task index posted through Sedna's ``/update`` is recorded under (``?job=`` names
another): Sedna's KB keeps one index for everything."""
DEFAULT_MAX_FILE = 512 * 1024 * 1024
"""Bytes of one model or sample file."""
MAX_LABELS = 10_000
"""Labels one request may give."""
MAX_LIMIT = 10_000
"""The most samples one listing returns."""
STAGES = ("train", "eval")
SAMPLE_STATES = ("unlabelled", "labelled", "delivered", "all")

_DNS = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class KBNotFound(KBRefused):
    """The job, the index version, the file or the samples asked for do not exist."""

    http_status = 404


class KBForbidden(KBRefused):
    """The KB does not do this (a pickle upload without ``allow_pickle``)."""

    http_status = 403


class KBTooLarge(KBRefused):
    """Over a bound: a file over its size, a job over its samples."""

    http_status = 413


class KBFilesDown(KBRefused):
    """The file store cannot be reached or failed; nothing was changed, try again later."""

    http_status = 503


def check_job(job: object, field: str = "job") -> str:
    """``job`` if it is ``namespace/name``, each a DNS-1123 name; else ``KBRefused``."""
    if not isinstance(job, str):
        raise KBRefused(f"{field}: must be a string 'namespace/name', got {type(job).__name__}")
    ns, sep, name = job.partition("/")
    if not sep or not _DNS.match(ns) or not _DNS.match(name):
        raise KBRefused(f"{field}: {job[:300]!r} is not 'namespace/name' (lowercase DNS names)")
    return job


def _errors(what: str, exc: pydantic.ValidationError) -> KBRefused:
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False)[:10]:
        path = format_path(tuple(err["loc"]))
        parts.append(f"{path}: {err['msg']}" if path else err["msg"])
    return KBRefused(f"{what}: {'; '.join(parts)}")


def _mapping(body: object, what: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        got = "null" if body is None else type(body).__name__
        raise KBRefused(f"{what}: must be a JSON object, got {got}")
    return body


_LABELS = TypeAdapter(dict[SampleId, Label])
_SCORES = TypeAdapter(dict[StrictStr, dict[StrictStr, StrictFloat]])
_IDS = TypeAdapter(list[SampleId])
_LABEL = TypeAdapter(Label)


class _MetricsBody(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore", strict=True)
    job: StrictStr
    round: int = Field(ge=0)
    stage: StrictStr
    scores: dict[StrictStr, dict[StrictStr, StrictFloat]]


M = TypeVar("M", bound=pydantic.BaseModel)


def _job_body(body: object, model: type[M], what: str) -> tuple[str, M]:
    """The ``job`` of a JSON object and the object parsed by ``model``; ``KBRefused`` naming
    what is wrong."""
    data = _mapping(body, what)
    job = check_job(data.get("job"))
    try:
        return job, model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _errors(what, exc) from None


def _stored(row: SampleRow) -> StoredSample:
    return StoredSample(
        job=row.job,
        node=row.node,
        sample=row.sample,
        received=row.received,
        label=row.label,
        labelled_at=row.labelled_at,
        delivered_at=row.delivered_at,
    )


def sample_json(s: StoredSample) -> dict[str, Any]:
    """A stored sample as the native API shows it."""
    out: dict[str, Any] = {
        **s.sample.to_body(),
        "job": s.job,
        "node": s.node,
        "received": s.received,
        "state": s.state,
    }
    out["label"] = s.label
    out["labelledAt"] = s.labelled_at
    out["deliveredAt"] = s.delivered_at
    return out


def index_url(job: str, version: int) -> str:
    return f"/knowledgebase/v1/index/{job}/{version}"


class LocalKnowledgeBase:
    """The knowledge base on a ``KBStore`` and a ``FileStore`` (see the module docstring)."""

    def __init__(
        self,
        store: KBStore,
        files: FileStore,
        *,
        allow_pickle: bool = False,
        max_file: int = DEFAULT_MAX_FILE,
    ) -> None:
        self.store = store
        self.files = files
        self.allow_pickle = allow_pickle
        self.max_file = max_file

    @classmethod
    def open(
        cls, data_dir: str | Path, *, allow_pickle: bool = False, files: FileStore | None = None
    ) -> LocalKnowledgeBase:
        """The KB of ``data_dir``: ``kb.db`` (the tables) and its files in ``files`` (default: the
        directory ``files/`` of ``data_dir``)."""
        root = Path(data_dir)
        root.mkdir(parents=True, exist_ok=True)
        store = KBStore(Database(root / "kb.db"))
        return cls(store, files or LocalFiles(root / "files"), allow_pickle=allow_pickle)

    def close(self) -> None:
        self.store.close()

    # -- the KnowledgeBase Protocol --------------------------------------------------------
    def add_unseen(self, job: str, node: str, samples: Sequence[UnseenSample]) -> int:
        check_job(job)
        if not isinstance(node, str) or not node:
            raise KBRefused("node: must be a non-empty string")
        try:
            return self.store.add_unseen(job, node, samples)
        except StoreFull as exc:
            raise KBTooLarge(str(exc)) from None

    def samples(
        self,
        job: str,
        *,
        state: SampleState = "all",
        predicted: Label | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[StoredSample]:
        check_job(job)
        if state not in SAMPLE_STATES:
            raise KBRefused(f"state: must be one of {', '.join(SAMPLE_STATES)}, got {state!r}")
        if not 1 <= limit <= MAX_LIMIT:
            raise KBRefused(f"limit: must be from 1 to {MAX_LIMIT}, got {limit}")
        rows = self.store.samples(job, state=state, predicted=predicted, limit=limit, after=after)
        return [_stored(r) for r in rows]

    def label(self, job: str, labels: Mapping[str, Label]) -> int:
        check_job(job)
        try:
            checked = _LABELS.validate_python(dict(labels), strict=True)
        except pydantic.ValidationError as exc:
            raise _errors("labels", exc) from None
        if not checked:
            raise KBRefused("labels: give at least one sample id and its label")
        if len(checked) > MAX_LABELS:
            raise KBRefused(f"labels: {len(checked)} given, at most {MAX_LABELS} a request")
        try:
            return self.store.label(job, checked)
        except UnknownSamples as exc:
            raise KBNotFound(str(exc)) from None

    def label_predicted(self, job: str, predicted: Label, label: Label) -> int:
        check_job(job)
        for name, value in (("predicted", predicted), ("label", label)):
            try:
                _LABEL.validate_python(value, strict=True)
            except pydantic.ValidationError:
                raise KBRefused(f"{name}: must be a string or an integer") from None
        return self.store.label_predicted(job, predicted, label)

    def undelivered(self, limit: int = 1000) -> list[StoredSample]:
        if not 1 <= limit <= MAX_LIMIT:
            raise KBRefused(f"limit: must be from 1 to {MAX_LIMIT}, got {limit}")
        return [_stored(r) for r in self.store.undelivered(limit)]

    def mark_delivered(self, job: str, ids: Sequence[str]) -> int:
        check_job(job)
        try:
            checked = _IDS.validate_python(list(ids), strict=True)
        except pydantic.ValidationError as exc:
            raise _errors("ids", exc) from None
        return self.store.mark_delivered(job, checked)

    def summary(self, job: str) -> KBStatus:
        """``status.knowledgeBase``: the models of the latest index's task groups (accuracy from
        the model's metrics, else the last round's metrics), their classes, the sample counts."""
        check_job(job)
        models: list[dict[str, Any]] = []
        classes: dict[str, None] = {}
        latest = self.store.index(job)
        if latest is not None:
            index = TaskIndex.model_validate(latest)
            scores = self._last_scores(job)
            for group in [*index.seen_task.task_groups, *index.unseen_task.task_groups]:
                if group.model is None:
                    continue
                accuracy = group.model.metrics.get("accuracy", scores.get(group.entry))
                models.append(
                    {
                        "modelID": group.entry,
                        "averagePrecision": float(accuracy or 0.0),
                        "numberOfTrainSamples": group.samples,
                    }
                )
                for c in group.model.classes or []:
                    classes[str(c)] = None
        unseen, labelled = self.store.sample_counts(job)
        return KBStatus.model_validate(
            {
                "AIModels": {"numberOfAIModels": len(models), "listOfAIModels": models or None},
                "AIClasses": {"numberOfAIClasses": len(classes), "listOfAIClasses": list(classes) or None},
                "samples": {"numberOfUnseenSample": unseen, "numberOfLabeledUnseenSample": labelled},
            }
        )

    def _last_scores(self, job: str) -> dict[str, float]:
        """Each task group's accuracy of the latest round that reported one (eval over train)."""
        out: dict[str, tuple[int, int, float]] = {}
        for round_, stage, task, scores in self.store.metrics(job):
            if "accuracy" in scores:
                rank = (round_, 1 if stage == "eval" else 0, scores["accuracy"])
                if task not in out or rank[:2] >= out[task][:2]:
                    out[task] = rank
        return {task: rank[2] for task, rank in out.items()}

    # -- the native API's other routes -----------------------------------------------------
    def post_samples(self, job: str, body: object) -> dict[str, Any]:
        data = _mapping(body, "samples body")
        node = data.get("node")
        if not isinstance(node, str) or not node:
            raise KBRefused("node: must be a non-empty string naming the edge node")
        try:
            parsed = UnseenSamples.parse({"samples": data.get("samples")})
        except InvalidBody as exc:
            raise KBRefused(str(exc)) from None
        return {"stored": self.add_unseen(job, node, parsed.samples)}

    def post_labels(self, job: str, body: object) -> dict[str, Any]:
        data = _mapping(body, "labels body")
        if "labels" in data:
            labels = data["labels"]
            if not isinstance(labels, Mapping):
                raise KBRefused("labels: must be an object of sample id -> label")
            return {"labelled": self.label(job, labels)}
        if "predicted" in data and "label" in data:
            return {"labelled": self.label_predicted(job, data["predicted"], data["label"])}
        raise KBRefused('labels body: give {"labels": {id: label}} or {"predicted": X, "label": Y}')

    def post_delivered(self, job: str, body: object) -> dict[str, Any]:
        ids = _mapping(body, "delivered body").get("ids")
        if not isinstance(ids, list):
            raise KBRefused("ids: must be a list of sample ids")
        return {"delivered": self.mark_delivered(job, ids)}

    def post_index(self, body: object) -> dict[str, Any]:
        job, index = _job_body(body, TaskIndex, "task index")
        version = self.store.add_index(job, index)
        log.info(
            "task index of %s: version %d (%d seen task groups)",
            job,
            version,
            len(index.seen_task.task_groups),
        )
        return {"version": version, "url": index_url(job, version)}

    def get_index(self, job: str, version: int | None = None) -> dict[str, Any]:
        check_job(job)
        found = self.store.index(job, version)
        if found is None:
            which = "no task index" if version is None else f"no task index version {version}"
            raise KBNotFound(f"job {job} has {which}")
        return found

    def post_metrics(self, body: object) -> dict[str, Any]:
        job, parsed = _job_body(body, _MetricsBody, "metrics")
        if parsed.stage not in STAGES:
            raise KBRefused(f"stage: must be train or eval, got {parsed.stage!r}")
        self.store.add_metrics(job, parsed.round, parsed.stage, parsed.scores)
        return {"job": job, "round": parsed.round, "stage": parsed.stage, "tasks": len(parsed.scores)}

    def metrics(self, job: str) -> dict[str, Any]:
        """``{"tasks": [...], "rounds": [...], "scores": {round: {task: {stage: {...}}}}}``."""
        check_job(job)
        rows = self.store.metrics(job)
        if not rows and not self.store.known(job):
            raise KBNotFound(f"the knowledge base knows no job {job}")
        tasks: dict[str, None] = {}
        rounds: dict[int, None] = {}
        scores: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
        for round_, stage, task, values in rows:
            tasks[task] = None
            rounds[round_] = None
            scores.setdefault(str(round_), {}).setdefault(task, {})[stage] = values
        return {"job": job, "tasks": list(tasks), "rounds": list(rounds), "scores": scores}

    def tasks(self, job: str) -> dict[str, Any]:
        check_job(job)
        if not self.store.known(job):
            raise KBNotFound(f"the knowledge base knows no job {job}")
        return {
            "job": job,
            "version": self.store.index_version(job),
            "taskGroups": self.store.task_groups(job),
        }

    # -- files -----------------------------------------------------------------------------
    def put_file(self, path: str, data: BinaryIO | bytes) -> dict[str, Any]:
        try:
            size = self.files.put(check_path(path), data, self.max_file)
        except BadPath as exc:
            raise KBRefused(str(exc)) from None
        except TooLarge as exc:
            raise KBTooLarge(str(exc)) from None
        except FilesUnavailable as exc:
            raise KBFilesDown(str(exc)) from None
        return {"path": path, "url": f"/knowledgebase/v1/files/{path}", "size": size}

    def open_file(self, path: str) -> tuple[BinaryIO, int]:
        """The file and its size (the caller closes it)."""
        try:
            return self.files.open_sized(path)
        except BadPath as exc:
            raise KBRefused(str(exc)) from None
        except FileMissing as exc:
            raise KBNotFound(str(exc)) from None
        except FilesUnavailable as exc:
            raise KBFilesDown(str(exc)) from None

    # -- Sedna's routes --------------------------------------------------------------------
    def sedna_upload(self, filename: str, data: BinaryIO | bytes) -> str:
        """Sedna's ``/file/upload``: the file kept under its name; Sedna's answer."""
        self.put_file(filename, data)
        return f"/file/download?files={filename}&name={filename}"

    def sedna_update(self, data: bytes, job: str = SEDNA_JOB) -> str:
        """Sedna's ``/update``: the pickled task index, loaded (only with ``allow_pickle``),
        recorded as the job's next index version and kept as ``index.pkl``; Sedna's answer."""
        if not self.allow_pickle:
            raise KBForbidden(PICKLE_REFUSED)
        check_job(job)
        try:
            loaded = _load_pickle(data)
        except Exception as exc:  # whatever the pickle's code raised
            raise KBRefused(
                f"task: cannot load the pickled task index ({type(exc).__name__}: {exc})"
            ) from None
        index = from_sedna(loaded, job)
        self.put_file(SEDNA_INDEX_FILE, data)
        version = self.store.add_index(job, index)
        log.info("Sedna task index recorded for %s as version %d", job, version)
        return f"/file/download?files={SEDNA_INDEX_FILE}&name={SEDNA_INDEX_FILE}"

    def sedna_status(self, body: object) -> str:
        """Sedna's ``/update/status``: task groups ``tasks`` (comma-separated) marked deployed
        (``status`` 1) or not (0), in ``job`` if given, else in every job; Sedna's answer."""
        data = _mapping(body, "status body")
        tasks, status = data.get("tasks"), data.get("status")
        if tasks is not None and not isinstance(tasks, str):
            raise KBRefused("tasks: must be a string of task group names separated by commas")
        if status not in (0, 1) or isinstance(status, bool):
            raise KBRefused("status: must be 0 or 1")
        job = data.get("job")
        names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
        changed = self.store.set_deploy(names, bool(status), None if job is None else check_job(job))
        log.info(
            "task groups %s marked %s (%d rows)", names, "deployed" if status else "not deployed", changed
        )
        return f"/file/download?files={SEDNA_INDEX_FILE}&name={SEDNA_INDEX_FILE}"

    def sedna_query(self) -> dict[str, Any]:
        """Sedna's ``/query`` (a stub there): the task groups the KB knows."""
        return {"tasks": self.store.task_names()}


PICKLE_REFUSED = (
    "this knowledge base does not load pickles: loading one runs any code its author put in it. "
    "Post the task index as JSON to /knowledgebase/v1/index, or start the KB with --allow-pickle "
    "if every client that can reach it is trusted"
)


def _load_pickle(data: bytes) -> Any:
    """A joblib file (Sedna's) or a plain pickle. Runs the pickle's code: callers check
    ``allow_pickle`` first."""
    try:
        import joblib
    except ImportError:
        return pickle.loads(data)  # only with allow_pickle (the caller checks)
    return joblib.load(io.BytesIO(data))


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _count(samples: Any) -> int:
    if samples is None:
        return 0
    if isinstance(samples, int):
        return max(samples, 0)
    try:
        return len(samples)
    except TypeError:
        return _count(_get(samples, "x"))


def _scalar_attrs(attrs: Any) -> dict[str, Any]:
    if not isinstance(attrs, Mapping):
        return {}
    return {str(k): v for k, v in attrs.items() if v is None or isinstance(v, str | int | float)}


def _sedna_group(group: Any) -> dict[str, Any]:
    model = _get(group, "model")
    out: dict[str, Any] = {
        "entry": str(_get(group, "entry")),
        "tasks": [
            {
                "entry": str(_get(t, "entry")),
                "attrs": _scalar_attrs(_get(t, "meta_attr")),
                "samples": _count(_get(t, "samples")),
            }
            for t in _get(group, "tasks") or []
        ],
        "samples": _count(_get(group, "samples")),
    }
    url = _get(model, "model") if model is not None else None
    if isinstance(url, str) and url:
        result = _get(model, "result")
        metrics = {
            str(k): float(v)
            for k, v in (result.items() if isinstance(result, Mapping) else [])
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        out["model"] = {"url": url, "metrics": metrics}
    return out


def _is_time(text: str) -> bool:
    try:
        parse_time(text)
    except ValueError:
        return False
    return True


def from_sedna(loaded: Any, job: str) -> TaskIndex:
    """Our ``TaskIndex`` of a task index Sedna pickled (objects or dicts; the flat form of
    Sedna before 0.6 too); ``KBRefused`` naming what does not fit."""
    seen = _get(loaded, "seen_task")
    if seen is None and _get(loaded, "task_groups") is not None:
        seen = loaded  # Sedna < 0.6: {"task_groups", "extractor"}
    unseen = _get(loaded, "unseen_task")
    create_time = _get(loaded, "create_time")
    try:
        body = {
            "job": job,
            "seen_task": {"task_groups": [_sedna_group(g) for g in _get(seen, "task_groups") or []]},
            "unseen_task": {"task_groups": [_sedna_group(g) for g in _get(unseen, "task_groups") or []]},
        }
        if isinstance(create_time, str) and _is_time(create_time):
            body["create_time"] = create_time
        return TaskIndex.model_validate(body)
    except pydantic.ValidationError as exc:
        raise _errors("task (Sedna's index)", exc) from None
    except TypeError as exc:
        raise KBRefused(f"task: not a task index Sedna writes ({exc})") from None
