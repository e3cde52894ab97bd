"""What the client prints: kubectl-like tables, ``describe`` text, a job's condition timeline.

Who calls it: the client's sub-commands (``lifelong.client.commands``) and unit tests. Pure:
it takes the JSON the GM's API answered and returns text; it does no I/O except reading the
clock for ages. ``lifelong.common.api`` (the pydantic models, about 0.3 s of CPU to import) is
imported by the functions that need it, so that ``lifelong delete`` or ``nodes`` start without it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from lifelong.common.errors import ValidationError
from lifelong.common.stages import STAGE_ORDER
from lifelong.common.statemachine import current_round, starts_round


def _age(created: str | None, now: datetime | None = None) -> str:
    if not created:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def _last_condition(obj: dict[str, Any]) -> dict[str, Any]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return conds[-1] if conds else {}


def _round(obj: dict[str, Any]) -> str:
    """The job's current round (``lifelong.common.statemachine.current_round``), "?" when a
    condition is malformed."""
    from lifelong.common.api import job_conditions

    try:
        return str(current_round(job_conditions((obj.get("status") or {}).get("conditions"))))
    except ValidationError:
        return "?"


def _node(template: Any) -> str:
    """The node a pod template names (``lifelong.common.api.worker_node``), else ``<none>``."""
    from lifelong.common.api import worker_node

    return worker_node(template if isinstance(template, dict) else None) or "<none>"


RESOURCE_NAMES = {
    "LifelongLearningJob": "lifelonglearningjob.sedna.io",
    "Dataset": "dataset.sedna.io",
    "Model": "model.sedna.io",
    "Worker": "worker.lifelong.io",
    "Node": "node",
}
"""kubectl's ``RESOURCE.GROUP`` of each kind, as ``-o name`` and the apply/delete lines print it."""


def object_name(kind: str, obj: dict[str, Any]) -> str:
    """The name of an object the GM answered; a node (``lifelong nodes``' items) has ``node``."""
    if kind == "Node":
        return str(obj.get("node", ""))
    return str((obj.get("metadata") or {}).get("name", ""))


def qualified_name(kind: str, obj: dict[str, Any]) -> str:
    """``RESOURCE.GROUP/NAME``, what ``-o name`` prints: ``lifelonglearningjob.sedna.io/job1``."""
    return f"{RESOURCE_NAMES.get(kind, kind.lower())}/{object_name(kind, obj)}"


def node_row(node: dict[str, Any]) -> list[str]:
    """A row of ``lifelong get nodes``: NAME STATUS AGENT UNACKED."""
    return [
        str(node.get("node", "")),
        "Online" if node.get("online") else "Offline",
        node.get("agent") or "<none>",
        str(node.get("unacked", 0)),
    ]


def row(kind: str, obj: dict[str, Any], wide: bool) -> list[str]:
    if kind == "Node":
        return node_row(obj)
    from lifelong.common.api import dataset_node, wire_templates

    meta = obj.get("metadata", {})
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    age = _age(meta.get("creationTimestamp"))
    if kind == "LifelongLearningJob":
        last = _last_condition(obj)
        cells = [meta.get("name", ""), last.get("stage", "<none>"), last.get("type", "<none>"), age]
        if wide:
            cells += [
                _round(obj),
                str((spec.get("dataset") or {}).get("name", "")),
                *(_node(template) for template in wire_templates(obj).values()),
            ]
        return cells
    if kind == "Dataset":
        cells = [
            meta.get("name", ""),
            dataset_node(obj) or "",
            str(status.get("numberOfSamples", 0)),
            age,
        ]
        if wide:
            cells += [str(spec.get("format", "")), str(spec.get("url", ""))]
        return cells
    if kind == "Model":
        return [meta.get("name", ""), str(spec.get("format", "")), str(spec.get("url", "")), age]
    node = _node(spec.get("template"))
    return [
        meta.get("name", ""),
        str(spec.get("job", "")),
        str(spec.get("stage", "")),
        node,
        str(status.get("phase", "<none>")),
        age,
    ]


def headers(kind: str, wide: bool) -> list[str]:
    if kind == "Node":
        return ["NAME", "STATUS", "AGENT", "UNACKED"]
    if kind == "LifelongLearningJob":
        return ["NAME", "STAGE", "STATUS", "AGE"] + (
            ["ROUND", "DATASET", "TRAIN-NODE", "EVAL-NODE", "DEPLOY-NODE"] if wide else []
        )
    if kind == "Dataset":
        return ["NAME", "NODE", "SAMPLES", "AGE"] + (["FORMAT", "URL"] if wide else [])
    if kind == "Model":
        return ["NAME", "FORMAT", "URL", "AGE"]
    return ["NAME", "JOB", "STAGE", "NODE", "PHASE", "AGE"]


def widths(rows: Iterable[Sequence[str]]) -> list[int]:
    """The width of each column of ``rows``."""
    rows = [list(r) for r in rows]
    return [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]


def table_line(cells: Sequence[str], column_widths: Sequence[int]) -> str:
    """One line of a table: each cell padded to its column's width (a longer cell widens it)."""
    padded = (cell.ljust(column_widths[i] if i < len(column_widths) else 0) for i, cell in enumerate(cells))
    return "   ".join(padded).rstrip()


def table(rows: Iterable[Sequence[str]]) -> str:
    rows = [list(r) for r in rows]
    column_widths = widths(rows)
    return "\n".join(table_line(r, column_widths) for r in rows)


def dump(value: Any, output: str) -> str:
    if output == "json":
        return json.dumps(value, indent=4)
    import yaml  # here: a table or JSON does not need PyYAML

    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def timeline(conds: Sequence[dict[str, Any]]) -> list[str]:
    """A job's conditions as a timeline: round, time, time since the previous, stage/type, why."""
    from lifelong.common.api import job_conditions

    rows = [["ROUND", "TIME", "+", "STAGE", "TYPE", "REASON", "MESSAGE"]]
    try:
        starts = [starts_round(cond) for cond in job_conditions(conds)]
    except ValidationError:  # a malformed condition: no rounds counted rather than wrong ones
        starts = [False] * len(conds)
    rnd = 0
    previous: datetime | None = None
    for c, start in zip(conds, starts, strict=True):
        rnd += start
        when = _parse_time(c.get("lastTransitionTime"))
        delta = ""
        if when is not None and previous is not None:
            delta = f"+{max(int((when - previous).total_seconds()), 0)}s"
        previous = when or previous
        message = str(c.get("message", ""))
        rows.append(
            [
                str(rnd) if rnd else "-",
                str(c.get("lastTransitionTime", "")),
                delta,
                str(c.get("stage", "")),
                str(c.get("type", "")),
                str(c.get("reason", "")),
                message if len(message) <= 80 else message[:77] + "...",
            ]
        )
    return table(rows).splitlines()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def last_reports(worker_info: dict[str, Any]) -> list[str]:
    """One line per worker: the models and metrics it posted last (``workerInfo`` reports)."""
    out = []
    for worker, info in sorted(worker_info.items()):
        results = info.get("results") if isinstance(info, dict) else None
        if isinstance(results, list) and results:
            parts = []
            for r in results:
                if isinstance(r, dict):
                    metrics = r.get("metrics") or {}
                    shown = (
                        ", ".join(f"{k}={_short(v)}" for k, v in metrics.items())
                        if isinstance(metrics, dict)
                        else ""
                    )
                    parts.append(f"{r.get('url', '?')}" + (f" ({shown})" if shown else ""))
            out.append(f"{worker}: " + "; ".join(parts))
        elif isinstance(results, list):
            out.append(f"{worker}: posted no models")
        else:
            out.append(f"{worker}: {json.dumps(info, default=str)[:100]}")
    return out


def job_nodes(obj: dict[str, Any], dataset: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(node, roles) for every node a job involves (``LLJobSpec.node_roles``): its Dataset's
    node and each template's."""
    from lifelong.common.api import dataset_node, node_roles, wire_templates

    roles = node_roles(wire_templates(obj), dataset_node(dataset))
    return [(node, ",".join(r)) for node, r in roles]


def hello_age(last_hello: Any) -> str:
    if not isinstance(last_hello, (int, float)) or last_hello <= 0:
        return "<never>"
    return _age(datetime.fromtimestamp(last_hello, UTC).isoformat()) + " ago"


def outbox_depth(node: dict[str, Any] | None) -> str:
    """The node's upstream backlog (reports in its outbox) as of its last hello."""
    outbox = None if node is None else node.get("outbox")
    depth = outbox.get("depth") if isinstance(outbox, dict) else None
    return str(depth) if isinstance(depth, int) and not isinstance(depth, bool) else "<unknown>"


def describe_text(info: dict[str, Any]) -> str:
    from lifelong.common.api import dataset_node, wire_templates

    obj = info["object"]
    meta = obj.get("metadata", {})
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    lines = [
        f"Name:              {meta.get('name')}",
        f"Namespace:         {meta.get('namespace')}",
        f"Kind:              {obj.get('kind')}",
        f"Created:           {meta.get('creationTimestamp')}",
        f"Resource Version:  {meta.get('resourceVersion')}",
    ]
    if obj.get("kind") == "LifelongLearningJob":
        last = _last_condition(obj)
        dataset = spec.get("dataset") or {}
        lines += [
            f"Dataset:           {dataset.get('name')} (trainProb {dataset.get('trainProb')})",
            f"Output Dir:        {spec.get('outputDir')}",
            f"Stage:             {last.get('stage', '<none>')}",
            f"Status:            {last.get('type', '<none>')}",
            f"Round:             {_round(obj)}",
            f"Start Time:        {status.get('startTime', '<none>')}",
            "Nodes:",
        ]
        templates = wire_templates(obj)
        for stage in STAGE_ORDER:
            lines.append(f"  {stage.value + ':':8} {_node(templates[stage])}")
        conds = status.get("conditions") or []
        lines.append("Conditions:")
        lines += ["  " + line for line in timeline(conds)] if conds else ["  <none>"]
        lines.append("Workers:")
        workers = info.get("workers") or []
        if workers:
            rows = [["NAME", "STAGE", "NODE", "PHASE"]]
            for w in workers:
                wspec = w.get("spec") or {}
                rows.append(
                    [
                        w["metadata"]["name"],
                        str(wspec.get("stage", "")),
                        _node(wspec.get("template")),
                        str((w.get("status") or {}).get("phase", "<none>")),
                    ]
                )
            lines += ["  " + line for line in table(rows).splitlines()]
        else:
            lines.append("  <none>")
        lines.append("Last Reports:")
        lines += ["  " + line for line in last_reports(info.get("workerInfo") or {})] or ["  <none>"]
        kb = status.get("knowledgeBase")
        lines.append("Knowledge Base:")
        lines += kb_lines(kb) if isinstance(kb, dict) else ["  <none>"]
    elif obj.get("kind") == "Dataset":
        lines += [
            f"URL:               {spec.get('url')}",
            f"Format:            {spec.get('format')}",
            f"Node:              {dataset_node(obj)}",
            f"Samples:           {status.get('numberOfSamples', 0)}",
            f"Updated:           {status.get('updateTime', '<none>')}",
        ]
    if obj.get("kind") == "Dataset":
        for cond in status.get("conditions") or []:
            lines.append(f"{cond.get('type', 'Ready') + ':':19}{cond.get('status')} ({cond.get('reason')})")
            lines.append(f"  {cond.get('message', '')}")
    waiting = info.get("waiting") or []
    if waiting:
        lines.append("Waiting For:")
        lines += [f"  {w.get('node')}: {w.get('reason')}: {w.get('message')}" for w in waiting]
    involved = info.get("nodes")
    if involved is not None:
        lines.append("Nodes Involved:")
        if involved:
            rows = [["NODE", "ROLE", "STATUS", "LAST HELLO", "UNACKED DOWN", "OUTBOX@HELLO"]]
            rows += [
                [n["node"], n["role"], n["status"], n["lastHello"], str(n["unacked"]), n.get("outbox", "")]
                for n in involved
            ]
            lines += ["  " + line for line in table(rows).splitlines()]
            lines.append("  (OUTBOX@HELLO: upstream reports pending in the node's outbox at its last hello)")
        else:
            lines.append("  <none>")
    delivery = info.get("delivery") or []
    lines.append("Delivery:")
    if delivery:
        rows = [["NODE", "OP", "VERSION", "ACKED", "ATTEMPTS"]]
        rows += [
            [d["node"], d["op"], d["rv"], "yes" if d["acked"] else "no", str(d["attempts"])] for d in delivery
        ]
        lines += ["  " + line for line in table(rows).splitlines()]
    else:
        lines.append("  <none>")
    return "\n".join(lines)


def kb_lines(kb: dict[str, Any]) -> list[str]:
    """A job's ``status.knowledgeBase`` (or ``lifelong kb summary``'s answer) as indented lines:
    its models with their metric and training samples, its classes, its unseen samples."""
    models = (kb.get("AIModels") or {}).get("listOfAIModels") or []
    classes = (kb.get("AIClasses") or {}).get("listOfAIClasses") or []
    samples = kb.get("samples") or {}
    lines = [f"  Models:          {(kb.get('AIModels') or {}).get('numberOfAIModels', len(models))}"]
    if models:
        rows = [["MODEL", "AVERAGE PRECISION", "TRAIN SAMPLES"]]
        rows += [
            [
                str(m.get("modelID", "")),
                f"{m.get('averagePrecision', 0.0):.4g}",
                str(m.get("numberOfTrainSamples", 0)),
            ]
            for m in models
            if isinstance(m, dict)
        ]
        lines += ["    " + line for line in table(rows).splitlines()]
    count = (kb.get("AIClasses") or {}).get("numberOfAIClasses", len(classes))
    lines.append(
        f"  Classes:         {count}" + (f" ({', '.join(str(c) for c in classes)})" if classes else "")
    )
    lines.append(
        f"  Unseen Samples:  {samples.get('numberOfUnseenSample', 0)} "
        f"({samples.get('numberOfLabeledUnseenSample', 0)} labelled)"
    )
    return lines


def nodes_table(items: Sequence[dict[str, Any]]) -> str:
    rows = [["NAME", "STATUS", "LAST HELLO", "AGENT", "UNACKED DOWN", "OUTBOX@HELLO"]]
    for n in items:
        rows.append(
            [
                str(n["node"]),
                "Online" if n["online"] else "Offline",
                hello_age(n.get("lastHello")),
                n.get("agent") or "<none>",
                str(n.get("unacked", 0)),
                outbox_depth(n),
            ]
        )
    return table(rows)
