"""What each console page shows, gathered from the store, the GM's state and the knowledge base.

Who calls it: ``cloud/console/app.py`` (one function per page; each returns the template's
context) and the console's ``Watcher`` (``digest``). Everything is read through the ``GMApi``
the HTTP API uses, so a page shows what ``lifelong get/describe/nodes/kb`` would.

A stored object the models refuse is shown with what can be read of it (its name), never
stops the page; a knowledge base that cannot be reached is said on the page.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lifelong.cloud.console import svg
from lifelong.cloud.kb.base import KBRefused, KBUnavailable, KnowledgeBase
from lifelong.cloud.stores.base import NotFound, Refused, parse, read
from lifelong.common.api import Dataset, LifelongLearningJob
from lifelong.common.api.lifelonglearningjob import worker_node
from lifelong.common.errors import LifelongError, ValidationError
from lifelong.common.samples import label_from_text
from lifelong.common.stages import Stage
from lifelong.common.statemachine import REASON_RETRY, starts_round

if TYPE_CHECKING:
    from lifelong.cloud.api_server import GMApi

JOB = LifelongLearningJob.KIND
SAMPLES_PAGE = 200
LOG_TIMEOUT = 5
"""Seconds the log page waits for the node's answer."""
UNSEEN_STATES = ("unlabelled", "labelled", "delivered", "all")


class PageNotFound(Exception):
    """What a page names does not exist (404 page saying what)."""


class BadFilter(Exception):
    """A filter value of the query string is wrong (400 page naming the field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _job(api: GMApi, ns: str, name: str) -> tuple[dict[str, Any], LifelongLearningJob | None]:
    obj = api.store.get(JOB, ns, name)
    if obj is None:
        raise PageNotFound(f'LifelongLearningJob "{name}" not found in namespace {ns}')
    try:
        job = parse(obj)
    except Refused:
        return obj, None
    return obj, job if isinstance(job, LifelongLearningJob) else None


def _jobs(api: GMApi) -> list[tuple[dict[str, Any], LifelongLearningJob | None]]:
    out: list[tuple[dict[str, Any], LifelongLearningJob | None]] = []
    for obj in api.store.list(JOB):
        try:
            job = parse(obj)
        except Refused:
            out.append((obj, None))
            continue
        out.append((obj, job if isinstance(job, LifelongLearningJob) else None))
    return sorted(out, key=lambda pair: _key(pair[0]))


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _nodes_of(api: GMApi, job: LifelongLearningJob) -> list[str]:
    try:
        dataset = read(api.store, Dataset, job.namespace, job.spec.dataset.name)
    except Refused:
        dataset = None
    return job.node_names(dataset)


def job_row(api: GMApi, obj: Mapping[str, Any], job: LifelongLearningJob | None) -> dict[str, Any]:
    ns, name = _key(obj)
    row: dict[str, Any] = {"ns": ns, "name": name, "stage": "-", "state": "-", "round": "?", "nodes": []}
    row["changed"] = ""
    if job is None:
        row["state"] = "refused by the models"
        return row
    last = job.last_condition
    if last is not None:
        row["stage"], row["state"] = last.stage.value, last.type.value
        row["changed"] = _wire_time(last.last_transition_time)
    row["round"] = job.round
    row["nodes"] = _nodes_of(api, job)
    return row


def _wire_time(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def jobs_page(api: GMApi) -> dict[str, Any]:
    return {"jobs": [job_row(api, obj, job) for obj, job in _jobs(api)]}


# -- a job ----------------------------------------------------------------------------------------


def _rounds(conditions: list[dict[str, Any]], job: LifelongLearningJob | None) -> list[tuple[int, Any]]:
    """Each condition with its round (``starts_round``, as ``lifelong describe`` counts)."""
    if job is None:
        return [(0, c) for c in conditions]
    out, round_ = [], 0
    for cond, parsed in zip(conditions, job.history, strict=True):
        round_ += starts_round(parsed)
        out.append((round_, cond))
    return out


def job_page(api: GMApi, ns: str, name: str) -> dict[str, Any]:
    obj, job = _job(api, ns, name)
    described = api.describe(JOB, ns, name)
    conditions = list((obj.get("status") or {}).get("conditions") or [])
    workers = []
    for w in described.get("workers", []):
        spec, status, meta = w.get("spec") or {}, w.get("status") or {}, w.get("metadata") or {}
        workers.append(
            {
                "name": meta.get("name", ""),
                "stage": spec.get("stage", ""),
                "round": spec.get("round", ""),
                "node": worker_node(spec.get("template")) or "",
                "phase": status.get("phase") or "",
                "message": status.get("message") or "",
            }
        )
    workers.sort(key=lambda w: (w["round"] if isinstance(w["round"], int) else -1, w["name"]))
    past, hidden = past_workers(
        job, name, _rounds(conditions, job), described.get("workerInfo") or {}, {w["name"] for w in workers}
    )
    matrix = kb_matrix(api, ns, name)
    return {
        "job": job_row(api, obj, job),
        "timeline": svg.timeline(_rounds(conditions, job)),
        "conditions": conditions,
        "workers": workers,
        "past": past,
        "past_hidden": hidden,
        "waiting": described.get("waiting", []),
        "plot": svg.plot(matrix["values"], matrix["tasks"], matrix["measures"]),
        "measures": matrix["legend"],
        "kb_message": matrix["message"],
    }


PAST_WORKERS = 60
"""Rows of the job page's earlier workers (the latest rounds'); the rest are counted."""
_WORKED = {"Starting", "Running", "Completed", "Failed"}
"""Condition types that say a stage's worker was started in that round."""
_PHASE = {"Completed": "Succeeded", "Failed": "Failed"}
_STAGES = {"Train": 0, "Eval": 1, "Deploy": 2}
_WORKER_NAME = re.compile(r"(?P<job>.+)-(?P<stage>train|eval|deploy)-(?P<round>\d+)(?:-retry(?P<retry>\d+))?")


def past_workers(
    job: LifelongLearningJob | None,
    name: str,
    rounds: list[tuple[int, Any]],
    worker_info: Mapping[str, Any],
    current: set[str],
) -> tuple[list[dict[str, Any]], int]:
    """The job's earlier workers, whose Worker objects the GM deleted once they finished. What
    the GM keeps of them (``lifelong describe`` shows it) is the job's conditions, in rounds: a
    stage started in a round had its worker ``{job}-{stage}-{round}`` (``-retry{n}`` for the
    n-th retry, as the controller names it), and the attempt's last condition is its end; and
    the last report each worker posted (``workerInfo``, by worker name). Latest round first, at
    most ``PAST_WORKERS`` rows, and how many more there are."""
    found: dict[str, dict[str, Any]] = {}
    attempt: dict[tuple[int, str], int] = {}
    for round_, cond in rounds:
        stage, kind = str(cond.get("stage", "")), str(cond.get("type", ""))
        if kind == "Ready":
            retry = cond.get("reason") == REASON_RETRY
            attempt[(round_, stage)] = attempt.get((round_, stage), 1) + 1 if retry else 1
        n = attempt.get((round_, stage), 1)
        worker = f"{name}-{stage.lower()}-{round_}" + (f"-retry{n - 1}" if n > 1 else "")
        if kind not in _WORKED or round_ == 0:
            continue  # the stage's Waiting and Ready come before its worker (the next round's too)
        if worker in found:
            found[worker]["last"] = cond
        else:
            found[worker] = {"name": worker, "stage": stage, "round": round_, "last": cond}
    for worker in map(str, worker_info):
        match = _WORKER_NAME.fullmatch(worker)
        if worker in found:
            continue
        if match and match["job"] == name:
            stage = match["stage"].capitalize()
            found[worker] = {"name": worker, "stage": stage, "round": int(match["round"]), "last": None}
        else:
            found[worker] = {"name": worker, "stage": "", "round": None, "last": None}
    out = []
    for w in found.values():
        last = w.pop("last")
        if w["name"] in current:
            continue
        kind = "" if last is None else str(last.get("type", ""))
        w["phase"] = _PHASE.get(kind, kind)
        w["message"] = "" if last is None else f"{kind} {_wire_time(last.get('lastTransitionTime'))}".strip()
        node = None
        if job is not None and w["stage"] in _STAGES:
            node = job.spec.worker_node(Stage(w["stage"]))
        w["node"] = node or ""
        w["reported"] = w["name"] in worker_info
        out.append(w)
    out.sort(key=lambda w: (-(w["round"] or 0), _STAGES.get(w["stage"], 9), w["name"]))
    return out[:PAST_WORKERS], max(len(out) - PAST_WORKERS, 0)


def worker_log_page(api: GMApi, ns: str, name: str) -> dict[str, Any]:
    """The tail of a worker's log through ``GMApi.worker_log`` (which finds the node of a
    finished worker too, from its job); 404 only when no log can be found (the API's reason).
    A node the GM sees offline is not asked (the page says so at once, not after the timeout)."""
    out: dict[str, Any] = {"ns": ns, "name": name, "text": None, "message": None}
    if api.logs is not None:
        node = api.logs.worker_node(ns, name)  # NotFound: no such worker, nor a job it belongs to
        info = api.state.node(node)
        if info is None or not info.online:
            seen = "unknown to the GM" if info is None else "offline"
            message = f"node {node} is {seen}: its LC gives the worker's log once it is connected"
            return {**out, "message": message}
    try:
        found = api.worker_log(ns, name, {"tail": ["200"], "timeout": [str(LOG_TIMEOUT)]})
    except NotFound:
        raise  # the node has no log of it: 404 with its reason
    except LifelongError as exc:  # the node did not answer, or cannot give it
        return {**out, "message": str(exc)}
    return {**out, "text": found.get("data", ""), "log": found}


# -- the knowledge base ---------------------------------------------------------------------------


def _kb(api: GMApi) -> KnowledgeBase | None:
    return api.kb.kb


MEASURES = ("test_accuracy", "accuracy")
"""The measures a cell of R[round][task] shows, best first: docs/lifelong-learning.md defines
R[k][j] as the accuracy on task j's test set (the Eval worker's ``test_accuracy``); ``accuracy``
(on the round's eval pool) where a stage scored no test set."""
MEASURE_TEXT = {
    "test_accuracy": "accuracy on the task's test set",
    "accuracy": "accuracy on the round's evaluation pool",
}


def score_of(stages: Mapping[str, Any]) -> tuple[float, str] | None:
    """One number for a (round, task) and the measure it is (``"eval test_accuracy"``): the first
    stage of eval, train that has scores, its ``test_accuracy``, else its ``accuracy``, else its
    first number."""
    for stage in ("eval", "train"):
        scores = stages.get(stage)
        if not isinstance(scores, Mapping) or not scores:
            continue
        for key in (*MEASURES, *scores):
            value = scores.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value), f"{stage} {key}"
    return None


def measure_text(measure: str) -> str:
    """``"eval test_accuracy"`` as a reader's words: what the number is."""
    stage, _, key = measure.partition(" ")
    return f"{stage}'s {key} ({MEASURE_TEXT[key]})" if key in MEASURE_TEXT else f"{stage}'s {key}"


def _rank(measure: str) -> int:
    """Which measure comes first among those of as many cells: the test set's, then eval's."""
    stage, _, key = measure.partition(" ")
    return (MEASURES.index(key) if key in MEASURES else len(MEASURES)) * 2 + (stage != "eval")


def kb_matrix(api: GMApi, ns: str, name: str) -> dict[str, Any]:
    """R[round][task] of the job from the KB's metrics (``values``), the measure of each cell
    (``measures``, the same keys), each measure shown and its cells (``legend``), and a message
    when there are none."""
    kb = _kb(api)
    values: dict[int, dict[str, float]] = {}
    measures: dict[int, dict[str, str]] = {}
    tasks: list[str] = []
    out: dict[str, Any] = {"values": values, "measures": measures, "tasks": tasks, "legend": []}
    if kb is None:
        return {**out, "message": "this GM has no knowledge base"}
    try:
        metrics = kb.metrics(f"{ns}/{name}")
    except KBUnavailable as exc:
        return {**out, "message": f"the knowledge base cannot be reached: {exc}"}
    except KBRefused:
        return {**out, "message": "no metrics yet"}
    counts: dict[str, int] = {}
    for round_text, by_task in (metrics.get("scores") or {}).items():
        for task, stages in by_task.items():
            found = score_of(stages)
            if found is None:
                continue
            round_ = int(round_text)
            values.setdefault(round_, {})[task] = found[0]
            measures.setdefault(round_, {})[task] = found[1]
            counts[found[1]] = counts.get(found[1], 0) + 1
            if task not in tasks:
                tasks.append(task)
    out["legend"] = [
        {"measure": m, "text": measure_text(m), "cells": n}
        for m, n in sorted(counts.items(), key=lambda item: (-item[1], _rank(item[0]), item[0]))
    ]
    return {**out, "message": None if values else "no metrics yet"}


def kb_index_page(api: GMApi) -> dict[str, Any]:
    return {"jobs": [job_row(api, obj, job) for obj, job in _jobs(api)], "kb_on": _kb(api) is not None}


def kb_page(api: GMApi, ns: str, name: str) -> dict[str, Any]:
    obj, job = _job(api, ns, name)
    out: dict[str, Any] = {"job": job_row(api, obj, job), "kb_on": _kb(api) is not None}
    out.update({"groups": [], "tasks": [], "transfers": [], "message": None, "index_version": None})
    kb = _kb(api)
    matrix = kb_matrix(api, ns, name)
    out["heatmap"] = svg.heatmap(matrix["values"], matrix["tasks"], matrix["measures"])
    out["measures"] = matrix["legend"]
    out["matrix_message"] = matrix["message"]
    if kb is None:
        return out
    try:
        found = kb.tasks(f"{ns}/{name}")
    except KBUnavailable as exc:
        out["message"] = f"the knowledge base cannot be reached: {exc}"
        return out
    except KBRefused:
        out["message"] = "the knowledge base holds no task index of this job yet"
        return out
    out["index_version"] = found.get("version")
    for group in found.get("taskGroups") or []:
        model = group.get("model") or {}
        metrics = model.get("metrics") or {}
        score = metrics.get("accuracy")
        out["groups"].append(
            {
                "name": group.get("entry", ""),
                "deployed": bool(group.get("deployed")),
                "samples": group.get("sampleNum", 0),
                "tasks": group.get("taskNum", 0),
                "model": model.get("url", ""),
                "metrics": metrics,
                "classes": model.get("classes") or [],
            }
        )
        for task in group.get("tasks") or []:
            out["tasks"].append(
                {
                    "name": task.get("entry", ""),
                    "group": group.get("entry", ""),
                    "model": model.get("url", ""),
                    "samples": task.get("samples", 0),
                    "score": "" if score is None else str(score),
                    "attrs": task.get("attrs") or {},
                }
            )
        transfer = group.get("transfer")
        if transfer:
            out["transfers"].append(
                {
                    "task": group.get("entry", ""),
                    "from": transfer.get("from", ""),
                    "ratio": transfer.get("ratio"),
                }
            )
    return out


# -- unseen samples -------------------------------------------------------------------------------


def unseen_index_page(api: GMApi) -> dict[str, Any]:
    kb = _kb(api)
    rows = []
    for obj, job in _jobs(api):
        row = job_row(api, obj, job)
        row["unlabelled"] = "-"
        if kb is not None:
            try:
                counts = kb.summary(f"{row['ns']}/{row['name']}").samples
                row["unlabelled"] = counts.number_of_unseen_sample - counts.number_of_labeled_unseen_sample
            except (KBUnavailable, KBRefused):
                row["unlabelled"] = "?"
        rows.append(row)
    return {"jobs": rows, "kb_on": kb is not None}


def _one(query: Mapping[str, list[str]], field: str) -> str | None:
    values = query.get(field)
    if not values:
        return None
    if len(values) > 1:
        raise BadFilter(field, "give it once")
    return values[0]


def label_text(value: Any) -> str:
    """A label or predicted class as text that ``label_from_text`` reads back as ``value``."""
    if isinstance(value, str):
        return value if label_from_text(value) == value else f'"{value}"'
    return str(value)


def unseen_page(api: GMApi, ns: str, name: str, query: Mapping[str, list[str]]) -> dict[str, Any]:
    obj, job = _job(api, ns, name)
    state = _one(query, "state") or "unlabelled"
    if state not in UNSEEN_STATES:
        raise BadFilter("state", f"must be one of {', '.join(UNSEEN_STATES)}, not {state[:40]!r}")
    node = _one(query, "node") or None
    predicted = _one(query, "predicted")
    after = _one(query, "after") or None
    out: dict[str, Any] = {
        "job": job_row(api, obj, job),
        "filters": {"state": state, "node": node or "", "predicted": predicted or ""},
        "states": UNSEEN_STATES,
        "samples": [],
        "classes": [],
        "next": None,
        "message": None,
        "kb_on": _kb(api) is not None,
    }
    kb = _kb(api)
    if kb is None:
        return out
    try:
        found = kb.samples(
            f"{ns}/{name}",
            state=state,  # type: ignore[arg-type]  # checked against UNSEEN_STATES above
            predicted=None if predicted in (None, "") else label_from_text(predicted),
            limit=SAMPLES_PAGE,
            after=after,
        )
    except KBUnavailable as exc:
        out["message"] = f"the knowledge base cannot be reached: {exc}"
        return out
    except KBRefused as exc:
        raise BadFilter("after", str(exc)) from None
    classes: dict[str, int] = {}
    for s in found:
        if node is not None and s.node != node:
            continue
        guess = "" if s.sample.predicted is None else label_text(s.sample.predicted)
        out["samples"].append(
            {
                "id": s.sample.id,
                "node": s.node,
                "predicted": guess,
                "confidence": s.sample.confidence,
                "task": s.sample.task or "",
                "label": "" if s.label is None else label_text(s.label),
                "state": s.state,
                "received": s.received,
                "row": s.sample.row,
            }
        )
        if s.state == "unlabelled" and s.sample.predicted is not None:
            classes[guess] = classes.get(guess, 0) + 1
    out["classes"] = sorted(classes.items())
    out["next"] = found[-1].sample.id if len(found) == SAMPLES_PAGE else None
    return out


def label(api: GMApi, ns: str, name: str, form: Mapping[str, str]) -> int:
    """Label through the GM API's KB routes (``KBApi.label``), as ``lifelong kb label`` does: one
    sample (``sample`` and ``label``) or every unlabelled one predicted ``predicted``."""
    _job(api, ns, name)
    text = form.get("label", "").strip()
    if not text:
        raise ValidationError([("label", "give a label")])
    value = label_from_text(text)
    if form.get("sample"):
        body: dict[str, Any] = {"labels": {form["sample"]: value}}
    elif form.get("predicted"):
        body = {"predicted": label_from_text(form["predicted"]), "label": value}
    else:
        raise ValidationError([("sample", "give the sample, or the predicted class")])
    try:
        return int(api.kb.label(ns, name, body)["labelled"])
    except NotFound as exc:
        raise PageNotFound(str(exc)) from None


# -- nodes ----------------------------------------------------------------------------------------


def nodes_page(api: GMApi) -> dict[str, Any]:
    per_node: dict[str, int] = {}
    for _obj, job in _jobs(api):
        if job is not None:
            for node in _nodes_of(api, job):
                per_node[node] = per_node.get(node, 0) + 1
    rows = []
    for n in api.nodes():
        when = n.get("lastHello")
        rows.append(
            {
                "node": n["node"],
                "online": bool(n["online"]),
                "agent": n.get("agent") or "",
                "last_hello": when,
                "last_hello_text": _time(when),
                "outbox": (n.get("outbox") or {}).get("depth"),
                "unacked": n.get("unacked", 0),
                "jobs": per_node.get(n["node"], 0),
            }
        )
    return {"nodes": rows}


def _time(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or seconds <= 0:
        return ""
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(microsecond=0)
    return stamp.isoformat().replace("+00:00", "Z")


# -- the watcher's digest -------------------------------------------------------------------------


def digest(api: GMApi, with_kb: bool) -> dict[str, Any]:
    """What the pages show, cheaply: resource versions, node rows, the KB's counts."""
    versions = []
    for kind in (JOB, "Worker", "Dataset"):
        for obj in api.store.list(kind):
            meta = obj.get("metadata") or {}
            versions.append((kind, meta.get("namespace"), meta.get("name"), meta.get("resourceVersion")))
    unacked = api.state.unacked_counts()
    nodes = [
        (n.node, n.online, n.last_hello, n.outbox_depth, unacked.get(n.node, 0)) for n in api.state.nodes()
    ]
    out: dict[str, Any] = {"jobs": sorted(versions, key=str), "nodes": nodes}
    kb = _kb(api)
    if with_kb and kb is not None:
        counts = []
        try:
            for kind, ns, name, _rv in versions:
                if kind == JOB:
                    counts.append(_kb_counts(kb, f"{ns}/{name}"))
        except KBUnavailable:
            return out  # the KB's part is read again next time
        out["kb"] = counts
    return out


def _kb_counts(kb: KnowledgeBase, job: str) -> tuple[str, int, int, int]:
    """(job, unseen samples, labelled ones, metrics rows) of one job in the KB."""
    try:
        samples = kb.summary(job).samples
        unseen, labelled = samples.number_of_unseen_sample, samples.number_of_labeled_unseen_sample
    except KBRefused:
        unseen = labelled = 0
    try:
        rows = sum(len(t) for t in (kb.metrics(job).get("scores") or {}).values())
    except KBRefused:
        rows = 0
    return job, unseen, labelled, rows
