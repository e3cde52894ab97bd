"""The client side of the GM's HTTP API: ``lifelong apply/get/describe/delete/nodes``, kubectl-like.

Who calls it: the ``lifelong`` dispatcher (``cli/__main__.py``) registers these sub-commands
through ``register``. The HTTP client is ``api.py``, the file reader ``files.py``, the printing
``format.py``. It is a client of the GM, not part of it: it imports only ``lifelong.common`` (an
import-linter contract in ``pyproject.toml`` keeps it so). Everything goes through the
GM's local HTTP API (``--server``, default http://127.0.0.1:9300); files are parsed and
validated locally first, so a typo is reported with its file and field before anything is sent.

Output follows kubectl: ``dataset.sedna.io/ds1 created`` / ``configured`` / ``unchanged`` /
``deleted``; ``get`` prints a table (``NAME STAGE STATUS AGE`` for jobs) or ``-o yaml|json|wide``;
errors are one line on stderr with a non-zero exit status (``NotFound`` 1, validation 2,
GM unreachable 1).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import quote

from lifelong.client.api import DEFAULT_SERVER, Client, NotFound
from lifelong.client.files import read_resources
from lifelong.client.format import (
    describe_text,
    dump,
    headers,
    hello_age,
    job_nodes,
    nodes_table,
    outbox_depth,
    row,
    table,
)
from lifelong.common.errors import ValidationError

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

_APPLY_ORDER = {"Dataset": 0, "Model": 1, "LifelongLearningJob": 2}


def kind_of(name: str) -> str:
    kind = _ALIAS.get(name.lower())
    if kind is None:
        choices = ", ".join(sorted({a for aliases in KIND_ALIASES.values() for a in aliases[:1]}))
        raise ValidationError([("", f'the server doesn\'t have a resource type "{name}" (try {choices})')])
    return kind


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
                "lastHello": hello_age(None if n is None else n.get("lastHello")),
                "unacked": 0 if n is None else n.get("unacked", 0),
                "outbox": outbox_depth(n),
            }
        )
    return out


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
    elif args.kind in NODE_ALIASES:
        return _delete_nodes(client, args.name, args.ignore_not_found)
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


NODE_ALIASES = ("node", "nodes", "no")


def _delete_nodes(client: Client, names: list[str], ignore_not_found: bool) -> int:
    """``lifelong delete node N...``: the GM forgets each node (docs/operations.md, "Nodes")."""
    if not names:
        raise ValidationError([("", "give the names of the nodes to delete")])
    status = 0
    for name in names:
        try:
            client.request("DELETE", f"/api/v1/nodes/{quote(name, safe='')}")
        except NotFound as exc:
            if not ignore_not_found:
                print(f"Error from server (NotFound): {exc}", file=sys.stderr)
                status = 1
            continue
        print(f'node "{name}" deleted')
    return status


def register(sub: Any) -> None:
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

    p = sub.add_parser(
        "delete",
        help="delete resources by KIND NAME... or -f FILE; `delete node N` makes the GM forget a node",
    )
    common(p)
    p.add_argument("kind", nargs="?", help="ll, ds, model or node")
    p.add_argument("name", nargs="*")
    p.add_argument("-f", "--filename", action="append", help="FILE, DIR or -")
    p.add_argument("--ignore-not-found", action="store_true")
    p.set_defaults(handler=cmd_delete)
