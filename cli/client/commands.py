"""The client side of the GM's HTTP API: ``lifelong apply/get/describe/delete/nodes``, kubectl-like.

Who calls it: the ``lifelong`` dispatcher (``cli/__main__.py``) registers these sub-commands
through ``register``. The HTTP client is ``api.py``, the file reader ``files.py``, the printing
``format.py``. It is a client of the GM, not part of it: it imports only ``lifelong.common`` (an
import-linter contract in ``pyproject.toml`` keeps it so). Everything goes through the
GM's HTTP API, found with its token and CA through the client's config file (``config.py``:
``--config``, ``--context``, ``--server``, ``LIFELONG_TOKEN``; default http://127.0.0.1:9300, no
token); files are parsed and validated locally first, so a typo is reported with its file and
field before anything is sent. ``lifelong config view|use-context|...`` shows and switches the
config file's contexts.

Output follows kubectl: ``dataset.sedna.io/ds1 created`` / ``configured`` / ``unchanged`` /
``deleted``; ``get`` prints a table (``NAME STAGE STATUS AGE`` for jobs) or
``-o yaml|json|wide|name|jsonpath=TEMPLATE`` (``jsonpath.py``), follows changes with ``-w``
(``watch.py``) and filters with ``-l SELECTOR`` (``selectors.py``); ``get``, ``describe`` and
``delete`` take ``KIND NAME...``, ``KIND1,KIND2``, ``KIND/NAME``; ``describe KIND`` describes
every object of the kind, ``delete KIND --all`` deletes them. Errors are one line on stderr with
a non-zero exit status (``NotFound`` 1 as kubectl, validation 2, GM unreachable 1).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from lifelong.client import config, kb, logs
from lifelong.client.api import Client, NotFound, from_args
from lifelong.client.files import read_resources
from lifelong.client.format import (
    RESOURCE_NAMES,
    describe_text,
    dump,
    headers,
    hello_age,
    job_nodes,
    nodes_table,
    object_name,
    outbox_depth,
    qualified_name,
    row,
    table,
    table_line,
    widths,
)
from lifelong.client.jsonpath import Template, parse_template
from lifelong.client.selectors import Selector, parse_selector
from lifelong.client.watch import follow
from lifelong.common.errors import ConfigError, ValidationError

KIND_ALIASES = {
    "LifelongLearningJob": ("ll", "lifelonglearningjob", "lifelonglearningjobs", "lljob", "lljobs"),
    "Dataset": ("ds", "dataset", "datasets"),
    "Model": ("model", "models"),
    "Worker": ("worker", "workers"),
}

_ALIAS = {alias: kind for kind, aliases in KIND_ALIASES.items() for alias in (*aliases, kind.lower())}

NODE_ALIASES = ("node", "nodes", "no")

APPLY_ORDER = {"Dataset": 0, "Model": 1, "LifelongLearningJob": 2}


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
    timeout = getattr(args, "request_timeout", None)
    if timeout is not None and timeout < 0:
        raise ValidationError([("", f"--request-timeout must not be negative, not {timeout}")])
    client = from_args(args, timeout or 30.0)
    args.__dict__.setdefault("open_clients", []).append(client)  # closed by _closing
    return client


def _closing(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``handler``, then the clients it opened closed (their kept-alive connections to the GM)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        finally:
            for client in args.__dict__.pop("open_clients", []):
                client.close()

    return run


Target = tuple[str, list[str]]
"""A kind and the names asked for (none: every object of the kind)."""


def cmd_apply(args: argparse.Namespace) -> int:
    resources = read_resources(args.filename)
    if not resources:
        raise ValidationError([("", "no objects passed to apply")])
    resources.sort(key=lambda r: APPLY_ORDER.get(r.get("kind", ""), 9))
    client = _client(args)
    for res in resources:
        if args.namespace and not res["metadata"].get("namespace"):
            res["metadata"]["namespace"] = args.namespace
        result = client.apply(res)
        print(f"{RESOURCE_NAMES.get(res['kind'], res['kind'])}/{res['metadata']['name']} {result['result']}")
    return 0


def targets(first: str, rest: Sequence[str], *, nodes: bool = False) -> list[Target]:
    """What ``KIND NAME...``, ``KIND1,KIND2 [NAME...]`` or ``KIND/NAME...`` ask for, as kubectl
    reads them: (kind, names) in the order given, names of one kind together. ``nodes``: the
    kind ``nodes`` (``lifelong get nodes``) is allowed."""

    def kind(name: str) -> str:
        if nodes and name.lower() in NODE_ALIASES:
            return "Node"
        return kind_of(name)

    if "/" in first:
        out: dict[str, list[str]] = {}
        for arg in (first, *rest):
            k, sep, name = arg.partition("/")
            if not sep or not k or not name:
                raise ValidationError(
                    [("", f"there is no need to specify a resource type as a separate argument when "
                      f"passing arguments in resource/name form (got {arg!r})")]
                )  # fmt: skip
            out.setdefault(kind(k), []).append(name)
        return list(out.items())
    if any("/" in name for name in rest):
        raise ValidationError([("", "arguments in resource/name form must have a single resource and name")])
    kinds = list(dict.fromkeys(kind(k) for k in first.split(",") if k))
    if not kinds:
        raise ValidationError([("", f"no resource type in {first!r}")])
    return [(k, list(rest)) for k in kinds]


def _selector(args: argparse.Namespace, groups: Sequence[Target]) -> Selector | None:
    if args.selector is None:
        return None
    if any(names for _, names in groups):
        raise ValidationError([("", "name cannot be provided when a selector is specified")])
    return parse_selector(args.selector)


def _labels(obj: dict[str, Any]) -> dict[str, str] | None:
    labels = (obj.get("metadata") or {}).get("labels")
    return labels if isinstance(labels, dict) else None


def fetch(
    client: Client, kind: str, names: Sequence[str], namespace: str | None, selector: Selector | None
) -> list[dict[str, Any]]:
    """The objects of ``kind`` named (each must exist), or all in ``namespace`` (every namespace:
    None) that ``selector`` matches."""
    if kind == "Node":
        items = client.nodes()
        if names:
            by_name = {object_name(kind, n): n for n in items}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise NotFound(f'node "{missing[0]}" not found')
            return [by_name[n] for n in names]
    elif names:
        return [client.get(kind, namespace or "default", name) for name in names]
    else:
        items = client.list(kind, namespace)
    return [o for o in items if selector is None or selector.matches(_labels(o))]


def _no_resources(args: argparse.Namespace) -> None:
    where = "" if getattr(args, "all_namespaces", False) else f" in {args.namespace} namespace"
    print(f"No resources found{where}.", file=sys.stderr)


class Output:
    """How ``get`` prints: ``-o`` table (default), ``wide``, ``yaml``, ``json``, ``name`` or
    ``jsonpath=TEMPLATE`` (``lifelong.client.jsonpath``)."""

    FORMATS = ("wide", "yaml", "json", "name", "jsonpath=TEMPLATE")

    def __init__(self, text: str | None, all_namespaces: bool, several_kinds: bool) -> None:
        self.template: Template | None = None
        self.format = text or ""
        if self.format.startswith("jsonpath="):
            self.template = parse_template(self.format[len("jsonpath=") :])
            self.format = "jsonpath"
        elif self.format not in ("", "wide", "yaml", "json", "name"):
            raise ValidationError(
                [("", f"unable to match a printer suitable for the output format {text!r}, "
                  f"allowed formats are: {', '.join(self.FORMATS)}")]
            )  # fmt: skip
        self.all_namespaces = all_namespaces
        self.several_kinds = several_kinds

    @property
    def tabular(self) -> bool:
        return self.format in ("", "wide")

    def document(self, value: Any) -> str:
        """``value`` (one object or a List) in the yaml/json/jsonpath format."""
        if self.template is not None:
            return self.template.render(value)
        return dump(value, self.format) + ("" if self.format == "yaml" else "\n")

    def rows(self, kind: str, objs: Sequence[dict[str, Any]]) -> list[list[str]]:
        """The header and one row for each object."""
        wide = self.format == "wide"
        rows = [headers(kind, wide)] + [row(kind, o, wide) for o in objs]
        if self.several_kinds:
            for o, r in zip(objs, rows[1:], strict=True):
                r[0] = qualified_name(kind, o)
        if self.all_namespaces and kind != "Node":
            rows = [["NAMESPACE", *rows[0]]] + [
                [(o.get("metadata") or {}).get("namespace", ""), *r]
                for o, r in zip(objs, rows[1:], strict=True)
            ]
        return rows


def cmd_get(args: argparse.Namespace) -> int:
    client = _client(args)
    groups = targets(args.kind, args.name, nodes=True)
    selector = _selector(args, groups)
    out = Output(args.output, args.all_namespaces, len(groups) > 1)
    namespace = None if args.all_namespaces else args.namespace
    if args.watch or args.watch_only:
        return _watch(args, client, groups, selector, out)
    found = [(kind, fetch(client, kind, names, namespace, selector)) for kind, names in groups]
    objs = [o for _, items in found for o in items]
    single = len(groups) == 1 and len(groups[0][1]) == 1
    if out.format in ("yaml", "json", "jsonpath"):
        value = objs[0] if single else {"apiVersion": "v1", "kind": "List", "items": objs}
        print(out.document(value), end="")
        return 0
    if not objs:
        _no_resources(args)
        return 0
    if out.format == "name":
        print("\n".join(qualified_name(kind, o) for kind, items in found for o in items))
        return 0
    print("\n\n".join(table(out.rows(kind, items)) for kind, items in found if items))
    return 0


def _watch(
    args: argparse.Namespace, client: Client, groups: Sequence[Target], selector: Selector | None, out: Output
) -> int:
    """``get -w``: the list (unless ``--watch-only``), then each change as it is seen (``watch.py``)."""
    if len(groups) != 1:
        raise ValidationError([("", "you may only specify a single resource type to watch")])
    if args.watch_interval <= 0:
        raise ValidationError([("", f"--watch-interval must be above 0, not {args.watch_interval}")])
    kind, names = groups[0]
    namespace = None if args.all_namespaces else args.namespace
    initial = fetch(client, kind, names, namespace, selector)  # a name that does not exist: NotFound

    def current() -> list[dict[str, Any]]:
        items = fetch(client, kind, [], namespace, selector)
        return [o for o in items if not names or object_name(kind, o) in names]

    def key(obj: dict[str, Any]) -> str:
        return f"{(obj.get('metadata') or {}).get('namespace', '')}/{object_name(kind, obj)}"

    header = out.rows(kind, [])[0]
    events = args.output_watch_events
    if events:
        header = ["EVENT", *header]
    column_widths: list[int] = []
    if out.tabular and initial and not args.watch_only:  # the initial list sets the widths
        column_widths += widths(
            [header, *([*(["ADDED"] if events else []), *r] for r in out.rows(kind, initial)[1:])]
        )

    def emit(type_: str, obj: dict[str, Any]) -> None:
        if out.tabular:
            cells = [*([type_] if events else []), *out.rows(kind, [obj])[1]]
            text = ""
            if not column_widths:  # the header goes with the first row printed
                column_widths.extend(widths([header, cells]))
            if not header_printed:
                text = table_line(header, column_widths) + "\n"
                header_printed.append(True)
            text += table_line(cells, column_widths) + "\n"
        elif out.format == "name":
            text = (f"{type_} " if events else "") + qualified_name(kind, obj) + "\n"
        else:
            text = out.document({"type": type_, "object": obj} if events else obj)
            if out.format == "yaml":
                text = "---\n" + text
        print(text, end="", flush=True)

    header_printed: list[bool] = []
    if not args.watch_only:
        for obj in initial:
            emit("ADDED", obj)
    follow(initial, current, key, emit, interval=args.watch_interval, duration=args.request_timeout or None)
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
    """``describe KIND NAME...``, ``KIND/NAME``, or every object of KIND (``-l``: those matching)."""
    client = _client(args)
    groups = targets(args.kind, args.name)
    selector = _selector(args, groups)
    keys: list[tuple[str, str, str]] = []
    for kind, names in groups:
        if names:
            keys += [(kind, args.namespace, name) for name in names]
        else:
            namespace = None if args.all_namespaces else args.namespace
            keys += [
                (kind, o["metadata"].get("namespace", "default"), o["metadata"]["name"])
                for o in fetch(client, kind, [], namespace, selector)
            ]
    if not keys:
        _no_resources(args)
        return 0
    texts = []
    for kind, namespace, name in keys:
        info = client.describe(kind, namespace, name)
        if kind in ("LifelongLearningJob", "Dataset"):
            info["nodes"] = involved_nodes(client, info["object"])
        texts.append(describe_text(info))
    print("\n\n".join(texts))
    return 0


def _delete_targets(args: argparse.Namespace, client: Client) -> list[tuple[str, str, str]]:
    """(kind, namespace, name) of what ``delete`` was asked to delete, in the order to delete."""
    chose = args.all or args.selector is not None
    if args.filename:
        if args.kind or chose:
            raise ValidationError(
                [("", "give either -f FILE or KIND NAME... (or KIND --all, KIND -l), not both")]
            )
        found = [
            (res["kind"], res["metadata"].get("namespace") or args.namespace, res["metadata"]["name"])
            for res in read_resources(args.filename)
        ]
        return sorted(found, key=lambda t: -APPLY_ORDER.get(t[0], 9))
    if not args.kind:
        raise ValidationError([("", "give KIND NAME..., KIND/NAME, KIND --all, KIND -l SELECTOR or -f FILE")])
    groups = targets(args.kind, args.name)
    if args.all and args.selector is not None:
        raise ValidationError([("", "give either --all or -l SELECTOR, not both")])
    selector = _selector(args, groups)
    out: list[tuple[str, str, str]] = []
    for kind, names in groups:
        if names and args.all:
            raise ValidationError([("", "give either NAME... or --all, not both")])
        if names:
            out += [(kind, args.namespace, name) for name in names]
        elif chose:
            out += [
                (kind, args.namespace, object_name(kind, o))
                for o in fetch(client, kind, [], args.namespace, selector)
            ]
        else:
            raise ValidationError(
                [("", f"resource(s) were provided, but no name was specified: give {args.kind} NAME..., "
                  f"{args.kind} --all or {args.kind} -l SELECTOR")]
            )  # fmt: skip
    return out


def cmd_delete(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.kind in NODE_ALIASES and not args.filename:
        return _delete_nodes(client, args.name, args.ignore_not_found)
    found = _delete_targets(args, client)
    if not found and (args.all or args.selector is not None):
        _no_resources(args)
        return 0
    status = 0
    for kind, ns, name in found:
        try:
            client.delete(kind, ns, name)
        except NotFound as exc:
            if not args.ignore_not_found:
                print(f"Error from server (NotFound): {exc}", file=sys.stderr)
                status = 1
            continue
        print(f'{RESOURCE_NAMES.get(kind, kind)} "{name}" deleted')
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


def cmd_config(args: argparse.Namespace) -> int:
    """``lifelong config view|current-context|get-contexts|use-context NAME`` (``config.py``)."""
    if args.verb == "view":
        print(dump(config.view(args.config), "yaml"), end="")
    elif args.verb == "use-context":
        config.use_context(args.config, args.name)
        print(f'Switched to context "{args.name}".')
    else:
        current, found = config.contexts(args.config)
        if args.verb == "current-context":
            if not current:
                raise ConfigError(f"config file {config.config_path(args.config)[0]}: no current-context")
            print(current)
        else:
            rows = [["CURRENT", "NAME", "CLUSTER", "USER", "NAMESPACE"]]
            rows += [["*" if name == current else "", name, *rest] for name, *rest in found]
            print(table(rows))
    return 0


def register(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        config.add_flags(p)
        p.add_argument(
            "--request-timeout",
            type=float,
            metavar="SECONDS",
            help="how long to wait for the GM's answer (default 30; 0: the default); "
            "with get -w: how long to watch before ending with status 0 (default: until Ctrl-C)",
        )

    def selector(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-l",
            "--selector",
            metavar="SELECTOR",
            help="only objects whose labels match: k=v, k!=v, k, !k, 'k in (a,b)', 'k notin (a,b)', "
            "comma-separated (all must hold)",
        )

    kinds = "ll, ds, model, worker; several as ll,ds; or KIND/NAME"
    p = sub.add_parser("apply", help="create or update resources from files (like kubectl apply)")
    common(p)
    p.add_argument("-f", "--filename", action="append", required=True, help="FILE, DIR or - (repeatable)")
    p.set_defaults(handler=_closing(cmd_apply))

    p = sub.add_parser(
        "get",
        help="list resources: ll|ds|model|worker|nodes [NAME...]",
        description="List resources as kubectl get does: KIND [NAME...], KIND1,KIND2, KIND/NAME...",
    )
    common(p)
    p.add_argument("kind", help=f"{kinds}; or nodes")
    p.add_argument("name", nargs="*", help="names (all when none)")
    p.add_argument(
        "-o",
        "--output",
        metavar="FORMAT",
        help="yaml, json, wide, name or jsonpath=TEMPLATE (kubectl's JSONPath: {.items[*].metadata.name}, "
        '{range .items[*]}{.metadata.name}{"\\n"}{end})',
    )
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    selector(p)
    p.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="after the list, print each object as it changes (Ctrl-C ends)",
    )
    p.add_argument("--watch-only", action="store_true", help="print changes only, not the list first")
    p.add_argument(
        "--output-watch-events",
        action="store_true",
        help="with -w: say ADDED, MODIFIED or DELETED for each change",
    )
    p.add_argument(
        "--watch-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with -w: how often the GM is asked for changes (default 1; a state held for less may not show)",
    )
    p.set_defaults(handler=_closing(cmd_get))

    p = sub.add_parser(
        "nodes",
        help="list the edge nodes the GM knows: online/offline, last hello, downstream and upstream backlog",
        description="List the edge nodes that said hello to the GM. UNACKED DOWN counts the desired-state "
        "changes the node has not acknowledged yet (its downstream backlog). OUTBOX@HELLO is the number "
        "of reports waiting in the node's outbox (its upstream backlog) as the node's last hello "
        "reported it; the GM learns it only from hellos, so it may be stale.",
    )
    config.add_flags(p, namespace=False)
    p.add_argument("-o", "--output", choices=["yaml", "json"], help="output format")
    p.set_defaults(handler=_closing(cmd_nodes))

    p = sub.add_parser(
        "describe",
        help="show a resource in detail",
        description="Show a resource in detail; for a job: its conditions as a timeline, its workers, "
        "the last reports of its workers, the nodes involved (with each node's pending outbox reports "
        "as of its last hello) and the delivery to each node. Without a name: every object of the kind.",
    )
    common(p)
    p.add_argument("kind", help=kinds)
    p.add_argument("name", nargs="*", help="names (every object of the kind when none)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace (without names)")
    selector(p)
    p.set_defaults(handler=_closing(cmd_describe))

    p = sub.add_parser(
        "delete",
        help="delete resources by KIND NAME..., KIND --all, KIND -l SELECTOR or -f FILE; "
        "`delete node N` makes the GM forget a node",
    )
    common(p)
    p.add_argument("kind", nargs="?", help="ll, ds, model or node; several as ll,ds; or KIND/NAME")
    p.add_argument("name", nargs="*")
    p.add_argument("-f", "--filename", action="append", help="FILE, DIR or -")
    p.add_argument("--all", action="store_true", help="every object of the kind in the namespace")
    selector(p)
    p.add_argument("--ignore-not-found", action="store_true")
    p.set_defaults(handler=_closing(cmd_delete))

    p = sub.add_parser(
        "config",
        help="show or change the client's config file (like kubectl config)",
        description="The client's kubeconfig-like file (--config, $LIFELONG_CONFIG, else "
        "~/.config/lifelong/config): clusters, users, contexts, current-context.",
    )
    config_help = "the config file (default: $LIFELONG_CONFIG, else ~/.config/lifelong/config)"
    p.add_argument("--config", metavar="FILE", help=config_help)
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, text in (
        ("view", "print the file, tokens shown as REDACTED"),
        ("current-context", "print the current context's name"),
        ("get-contexts", "list the contexts; * marks the current one"),
        ("use-context", "make NAME the current context (rewrites the file)"),
    ):
        v = verbs.add_parser(verb, help=text)
        v.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=config_help)
        if verb == "use-context":
            v.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_config)

    logs.register(sub)  # lifelong logs (cli/client/logs.py)
    kb.register(sub)  # lifelong kb samples|label|summary (cli/client/kb.py)
