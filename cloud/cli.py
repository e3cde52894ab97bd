"""The client side of the GM's HTTP API: ``lifelong apply/get/describe/delete``, kubectl-like.

Who calls it: ``cloud/commands.py`` registers these sub-commands. Everything goes through the
GM's local HTTP API (``--server``, default http://127.0.0.1:9300); files are parsed and
validated locally first, so a typo is reported with its file and field before anything is sent.

Output follows kubectl: ``dataset.sedna.io/ds1 created`` / ``configured`` / ``unchanged`` /
``deleted``; ``get`` prints a table (``NAME STAGE STATUS AGE`` for jobs) or ``-o yaml|json|wide``;
errors are one line on stderr with a non-zero exit status (``NotFound`` 1, validation 2,
GM unreachable 1).
"""

from __future__ import annotations

import argparse
import builtins
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from lifelong.cloud.stores.base import NotFound
from lifelong.common.api import dump_resource, load_documents, node_roles, wire_templates
from lifelong.common.errors import LifelongError, ValidationError

DEFAULT_SERVER = "http://127.0.0.1:9300"

KIND_ALIASES = {
    "LifelongLearningJob": ("ll", "lifelonglearningjob", "lifelonglearningjobs", "lljob", "lljobs"),
    "Dataset": ("ds", "dataset", "datasets"),
    "Model": ("model", "models"),
    "Worker": ("worker", "workers"),
}
_ALIAS = {alias: kind for kind, aliases in KIND_ALIASES.items() for alias in (*aliases, kind.lower())}
_PLURAL = {
    "LifelongLearningJob": "lifelonglearningjob.sedna.io",
    "Dataset": "dataset.sedna.io",
    "Model": "model.sedna.io",
    "Worker": "worker.lifelong.io",
}
# Applied in this order within one command, so a Dataset exists before the job naming it.
_APPLY_ORDER = {"Dataset": 0, "Model": 1, "LifelongLearningJob": 2}


class ServerUnreachable(LifelongError):
    exit_code = 1


class ServerError(LifelongError):
    exit_code = 1


def kind_of(name: str) -> str:
    kind = _ALIAS.get(name.lower())
    if kind is None:
        choices = ", ".join(sorted({a for aliases in KIND_ALIASES.values() for a in aliases[:1]}))
        raise ValidationError([("", f'the server doesn\'t have a resource type "{name}" (try {choices})')])
    return kind


# -- HTTP -----------------------------------------------------------------------------------


class Client:
    def __init__(self, server: str, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read() or b"{}")
            except ValueError:
                err = {}
            message = err.get("error") or f"HTTP {exc.code}"
            reason = err.get("reason", "")
            if exc.code == 404:
                raise NotFound(message) from None
            if exc.code == 400 and reason == "ValidationError":
                raise ValidationError([("", message)]) from None
            raise ServerError(f"the GM refused ({exc.code}): {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnreachable(f"cannot reach the GM at {self.server}: {reason}") from None

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/api/v1/apply", obj)
        return result

    def list(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        query = "" if namespace is None else f"?namespace={quote(namespace)}"
        return list(self.request("GET", f"/api/v1/{kind}{query}")["items"])

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.request("GET", f"/api/v1/{kind}/{quote(namespace)}/{quote(name)}")
        return obj

    def delete(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("DELETE", f"/api/v1/{kind}/{quote(namespace)}/{quote(name)}")
        return out

    def describe(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"/api/v1/describe/{kind}/{quote(namespace)}/{quote(name)}")
        return out

    def nodes(self) -> builtins.list[dict[str, Any]]:
        return list(self.request("GET", "/api/v1/nodes")["items"])


# -- files ----------------------------------------------------------------------------------


def read_resources(paths: Sequence[str], stdin: Any = None) -> list[dict[str, Any]]:
    """Every resource in the files, directories (``*.yaml``, ``*.yml``, ``*.json``) or ``-``."""
    out: list[dict[str, Any]] = []
    for given in paths:
        if given == "-":
            text = (stdin or sys.stdin).read()
            out.extend(dump_resource(r) for r in _load(text, "<stdin>"))
            continue
        path = Path(given)
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json") and p.is_file()
            )
        elif path.exists():
            files = [path]
        else:
            raise ValidationError([("", f'the path "{given}" does not exist')])
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValidationError([("", f"cannot read {file}: {exc}")]) from None
            out.extend(dump_resource(r) for r in _load(text, str(file)))
    return out


def _load(text: str, source: str) -> list[Any]:
    """``load_documents`` with what it lets through turned into a ``ValidationError``: YAML's
    reader refusing a control character, and nesting too deep to parse (found by the fault
    suite's fuzzing, tests/faults/test_bad_input.py)."""
    try:
        return list(load_documents(text, source=source))
    except yaml.YAMLError as exc:
        raise ValidationError([("", f"invalid YAML: {exc}")], source=source) from None
    except RecursionError:
        raise ValidationError([("", "the document is nested too deeply")], source=source) from None


# -- formatting -----------------------------------------------------------------------------


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


def _round(obj: dict[str, Any]) -> int:
    conds = (obj.get("status") or {}).get("conditions") or []
    return sum(1 for c in conds if c.get("stage") == "Train" and c.get("type") == "Ready")


def _node(template: Any) -> str:
    if isinstance(template, dict):
        node = (template.get("spec") or {}).get("nodeName")
        if isinstance(node, str):
            return node
    return "<none>"


def row(kind: str, obj: dict[str, Any], wide: bool) -> list[str]:
    meta = obj.get("metadata", {})
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    age = _age(meta.get("creationTimestamp"))
    if kind == "LifelongLearningJob":
        last = _last_condition(obj)
        cells = [meta.get("name", ""), last.get("stage", "<none>"), last.get("type", "<none>"), age]
        if wide:
            cells += [
                str(_round(obj)),
                str((spec.get("dataset") or {}).get("name", "")),
                _node((spec.get("trainSpec") or {}).get("template")),
                _node((spec.get("evalSpec") or {}).get("template")),
                _node((spec.get("deploySpec") or {}).get("template")),
            ]
        return cells
    if kind == "Dataset":
        cells = [
            meta.get("name", ""),
            str(spec.get("nodeName", "")),
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
    if kind == "LifelongLearningJob":
        return ["NAME", "STAGE", "STATUS", "AGE"] + (
            ["ROUND", "DATASET", "TRAIN-NODE", "EVAL-NODE", "DEPLOY-NODE"] if wide else []
        )
    if kind == "Dataset":
        return ["NAME", "NODE", "SAMPLES", "AGE"] + (["FORMAT", "URL"] if wide else [])
    if kind == "Model":
        return ["NAME", "FORMAT", "URL", "AGE"]
    return ["NAME", "JOB", "STAGE", "NODE", "PHASE", "AGE"]


def table(rows: Iterable[Sequence[str]]) -> str:
    rows = [list(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["   ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    return "\n".join(lines)


def dump(value: Any, output: str) -> str:
    if output == "json":
        return json.dumps(value, indent=4)
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
    rows = [["ROUND", "TIME", "+", "STAGE", "TYPE", "REASON", "MESSAGE"]]
    rnd = 0
    previous: datetime | None = None
    for c in conds:
        if c.get("stage") == "Train" and c.get("type") == "Ready":
            rnd += 1
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
    ds_node = ((dataset or {}).get("spec") or {}).get("nodeName")
    roles = node_roles(wire_templates(obj), ds_node if isinstance(ds_node, str) and ds_node else None)
    return [(node, ",".join(r)) for node, r in roles]


def _hello_age(last_hello: Any) -> str:
    if not isinstance(last_hello, (int, float)) or last_hello <= 0:
        return "<never>"
    return _age(datetime.fromtimestamp(last_hello, UTC).isoformat()) + " ago"


def _outbox_depth(node: dict[str, Any] | None) -> str:
    """The node's upstream backlog (reports in its outbox) as of its last hello."""
    outbox = None if node is None else node.get("outbox")
    depth = outbox.get("depth") if isinstance(outbox, dict) else None
    return str(depth) if isinstance(depth, int) and not isinstance(depth, bool) else "<unknown>"


def involved_nodes(client: Client, obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The nodes of a job (or a Dataset) with what the GM knows of each."""
    if obj.get("kind") == "Dataset":
        node = (obj.get("spec") or {}).get("nodeName")
        pairs = [(node, "dataset")] if isinstance(node, str) and node else []
    else:
        ds_name = ((obj.get("spec") or {}).get("dataset") or {}).get("name")
        dataset = None
        if ds_name:
            try:
                dataset = client.get("Dataset", obj["metadata"].get("namespace", "default"), ds_name)
            except NotFound:
                dataset = None
        pairs = job_nodes(obj, dataset)
    known = {n["node"]: n for n in client.nodes()}
    out = []
    for node, role in pairs:
        n = known.get(node)
        out.append(
            {
                "node": node,
                "role": role,
                "status": "<unknown>" if n is None else ("Online" if n["online"] else "Offline"),
                "lastHello": _hello_age(None if n is None else n.get("lastHello")),
                "unacked": 0 if n is None else n.get("unacked", 0),
                "outbox": _outbox_depth(n),
            }
        )
    return out


def describe_text(info: dict[str, Any]) -> str:
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
        for stage, field in (("Train", "trainSpec"), ("Eval", "evalSpec"), ("Deploy", "deploySpec")):
            lines.append(f"  {stage + ':':8} {_node((spec.get(field) or {}).get('template'))}")
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
    elif obj.get("kind") == "Dataset":
        lines += [
            f"URL:               {spec.get('url')}",
            f"Format:            {spec.get('format')}",
            f"Node:              {spec.get('nodeName')}",
            f"Samples:           {status.get('numberOfSamples', 0)}",
            f"Updated:           {status.get('updateTime', '<none>')}",
        ]
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


# -- commands -------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    return Client(args.server)


def cmd_apply(args: argparse.Namespace) -> int:
    resources = read_resources(args.filename)
    if not resources:
        raise ValidationError([("", "no objects passed to apply")])
    resources.sort(key=lambda r: _APPLY_ORDER.get(r.get("kind", ""), 9))
    client = _client(args)
    for res in resources:
        if args.namespace and not res["metadata"].get("namespace"):
            res["metadata"]["namespace"] = args.namespace
        result = client.apply(res)
        print(f"{_PLURAL.get(res['kind'], res['kind'])}/{res['metadata']['name']} {result['result']}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.kind.lower() in ("node", "nodes", "no"):
        rows = [["NAME", "STATUS", "AGENT", "UNACKED"]]
        for n in client.nodes():
            rows.append(
                [n["node"], "Online" if n["online"] else "Offline", n["agent"] or "<none>", str(n["unacked"])]
            )
        print(table(rows))
        return 0
    kind = kind_of(args.kind)
    if args.name:
        objs = [client.get(kind, args.namespace, name) for name in args.name]
    else:
        objs = client.list(kind, None if args.all_namespaces else args.namespace)
    if args.output in ("yaml", "json"):
        value: Any = (
            objs[0] if args.name and len(objs) == 1 else {"apiVersion": "v1", "kind": "List", "items": objs}
        )
        print(dump(value, args.output), end="" if args.output == "yaml" else "\n")
        return 0
    if not objs:
        where = "" if args.all_namespaces else f" in {args.namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    wide = args.output == "wide"
    rows = [headers(kind, wide)]
    rows += [row(kind, o, wide) for o in objs]
    if args.all_namespaces:
        rows = [["NAMESPACE", *rows[0]]] + [
            [o["metadata"].get("namespace", ""), *r] for o, r in zip(objs, rows[1:], strict=True)
        ]
    print(table(rows))
    return 0


def nodes_table(items: Sequence[dict[str, Any]]) -> str:
    rows = [["NAME", "STATUS", "LAST HELLO", "AGENT", "UNACKED DOWN", "OUTBOX@HELLO"]]
    for n in items:
        rows.append(
            [
                str(n["node"]),
                "Online" if n["online"] else "Offline",
                _hello_age(n.get("lastHello")),
                n.get("agent") or "<none>",
                str(n.get("unacked", 0)),
                _outbox_depth(n),
            ]
        )
    return table(rows)


def cmd_nodes(args: argparse.Namespace) -> int:
    items = _client(args).nodes()
    if args.output in ("yaml", "json"):
        print(dump({"items": items}, args.output), end="" if args.output == "yaml" else "\n")
        return 0
    if not items:
        print("No nodes have said hello to this GM yet.", file=sys.stderr)
        return 0
    print(nodes_table(items))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    kind = kind_of(args.kind)
    client = _client(args)
    texts = []
    for name in args.name:
        info = client.describe(kind, args.namespace, name)
        if kind in ("LifelongLearningJob", "Dataset"):
            info["nodes"] = involved_nodes(client, info["object"])
        texts.append(describe_text(info))
    print("\n\n".join(texts))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    client = _client(args)
    targets: list[tuple[str, str, str]] = []
    if args.filename:
        if args.kind:
            raise ValidationError([("", "give either -f FILE or KIND NAME..., not both")])
        for res in read_resources(args.filename):
            targets.append(
                (res["kind"], res["metadata"].get("namespace") or args.namespace, res["metadata"]["name"])
            )
        targets.sort(key=lambda t: -_APPLY_ORDER.get(t[0], 9))
    else:
        if not args.kind or not args.name:
            raise ValidationError([("", "give KIND NAME... or -f FILE")])
        kind = kind_of(args.kind)
        targets = [(kind, args.namespace, name) for name in args.name]
    status = 0
    for kind, ns, name in targets:
        try:
            client.delete(kind, ns, name)
        except NotFound as exc:
            if not args.ignore_not_found:
                print(f"Error from server (NotFound): {exc}", file=sys.stderr)
                status = 1
            continue
        print(f'{_PLURAL.get(kind, kind)} "{name}" deleted')
    return status


def add_client_commands(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--server", "-s", default=DEFAULT_SERVER, help=f"the GM's API (default {DEFAULT_SERVER})"
        )
        p.add_argument("--namespace", "-n", default="default", help="namespace (default: default)")

    p = sub.add_parser("apply", help="create or update resources from files (like kubectl apply)")
    common(p)
    p.add_argument("-f", "--filename", action="append", required=True, help="FILE, DIR or - (repeatable)")
    p.set_defaults(handler=cmd_apply)

    p = sub.add_parser("get", help="list resources: ll|ds|model|worker|nodes [NAME...]")
    common(p)
    p.add_argument("kind", help="ll, ds, model, worker or nodes")
    p.add_argument("name", nargs="*", help="names (all when none)")
    p.add_argument("-o", "--output", choices=["yaml", "json", "wide"], help="output format")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.set_defaults(handler=cmd_get)

    p = sub.add_parser(
        "nodes",
        help="list the edge nodes the GM knows: online/offline, last hello, downstream and upstream backlog",
        description="List the edge nodes that said hello to the GM. UNACKED DOWN counts the desired-state "
        "changes the node has not acknowledged yet (its downstream backlog). OUTBOX@HELLO is the number "
        "of reports waiting in the node's outbox (its upstream backlog) as the node's last hello "
        "reported it; the GM learns it only from hellos, so it may be stale.",
    )
    p.add_argument("--server", "-s", default=DEFAULT_SERVER, help=f"the GM's API (default {DEFAULT_SERVER})")
    p.add_argument("-o", "--output", choices=["yaml", "json"], help="output format")
    p.set_defaults(handler=cmd_nodes)

    p = sub.add_parser(
        "describe",
        help="show a resource in detail",
        description="Show a resource in detail; for a job: its conditions as a timeline, its workers, "
        "the last reports of its workers, the nodes involved (with each node's pending outbox reports "
        "as of its last hello) and the delivery to each node.",
    )
    common(p)
    p.add_argument("kind", help="ll, ds, model or worker")
    p.add_argument("name", nargs="+")
    p.set_defaults(handler=cmd_describe)

    p = sub.add_parser("delete", help="delete resources by KIND NAME... or -f FILE")
    common(p)
    p.add_argument("kind", nargs="?", help="ll, ds or model")
    p.add_argument("name", nargs="*")
    p.add_argument("-f", "--filename", action="append", help="FILE, DIR or -")
    p.add_argument("--ignore-not-found", action="store_true")
    p.set_defaults(handler=cmd_delete)
