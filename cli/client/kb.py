"""``lifelong kb samples|label|summary``: a job's unseen samples in the knowledge base, and their labels.

Who calls it: ``register_kb_client(kb_subparsers)`` adds these commands to the ``lifelong kb``
command group (which also holds ``lifelong kb serve``, the KB service itself); ``register``
makes that group when nothing else has (see its docstring). Everything goes through the GM's
API (``GET|POST /api/v1/namespaces/{ns}/lifelonglearningjobs/{job}/kb/...``,
``cloud/kb_routes.py``) with the same ``--server``/``--config``/``--context``/token handling as
the other client commands (``config.py``, ``api.py``):

* ``lifelong kb samples JOB [--state unlabelled|labelled|delivered|all] [--predicted X]
  [--limit N] [-o table|json|yaml]``: the job's unseen samples, in the order they were received
  (fetched a page at a time, at most ``--limit``);
* ``lifelong kb label JOB ID LABEL``; ``lifelong kb label JOB --file F`` (CSV lines ``id,label``,
  an ``id,label`` header allowed, or a JSON map ``{"id": label}``; ``-`` reads stdin);
  ``lifelong kb label JOB --predicted X --label Y`` (every unlabelled sample predicted X);
* ``lifelong kb summary JOB [-o text|json|yaml]``: the job's models, classes and sample counts
  (what ``status.knowledgeBase`` says once the GM refreshed it).

A label typed on the command line or in a CSV file is a whole number when it looks like one
(``3``), else a string; quote it (``'"3"'``) to keep it a string (``label_from_text``). A file of
labels is sent in requests of ``LABELS_PER_REQUEST``; each is labelled whole or not at all, and
a refusal says how many were labelled before it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from lifelong.client import config
from lifelong.client.api import Client, from_args
from lifelong.client.format import dump, kb_lines, table
from lifelong.common.errors import LifelongError, ValidationError
from lifelong.common.samples import label_from_text

STATES = ("unlabelled", "labelled", "delivered", "all")
PAGE = 1000
"""Samples asked for in one request."""
LABELS_PER_REQUEST = 5000
"""Labels sent in one request (the GM takes bodies up to 1 MiB)."""


class PartlyLabelled(LifelongError):
    """A refusal after some requests of a file of labels succeeded."""


def _path(args: argparse.Namespace, what: str = "") -> str:
    ns, job = quote(args.namespace, safe=""), quote(args.job, safe="")
    return f"/api/v1/namespaces/{ns}/lifelonglearningjobs/{job}/kb/{what}"


def _open(args: argparse.Namespace) -> Client:
    timeout = args.request_timeout
    if timeout is not None and timeout < 0:
        raise ValidationError([("", f"--request-timeout must not be negative, not {timeout}")])
    return from_args(args, timeout or 30.0)


# -- samples ---------------------------------------------------------------------------------------


def fetch_samples(client: Client, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Up to ``args.limit`` samples, a page at a time (``next`` of one page is the next's ``after``)."""
    items: list[dict[str, Any]] = []
    after: str | None = None
    while len(items) < args.limit:
        params: dict[str, Any] = {"state": args.state, "limit": min(PAGE, args.limit - len(items))}
        if args.predicted is not None:
            params["predicted"] = args.predicted
        if after is not None:
            params["after"] = after
        answer = client.request("GET", _path(args, "samples") + "?" + urlencode(params))
        items += answer.get("items") or []
        after = answer.get("next")
        if not after:
            break
    return items


def _cell(value: Any) -> str:
    if value is None:
        return "<none>"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def samples_table(items: list[dict[str, Any]]) -> str:
    rows = [["ID", "STATE", "PREDICTED", "CONFIDENCE", "LABEL", "NODE", "RECEIVED"]]
    rows += [
        [
            str(s.get("id", "")),
            str(s.get("state", "")),
            _cell(s.get("predicted")),
            _cell(s.get("confidence")),
            _cell(s.get("label")),
            str(s.get("node", "")),
            str(s.get("received", "")),
        ]
        for s in items
    ]
    return table(rows)


def cmd_samples(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ValidationError([("", f"--limit must be at least 1, not {args.limit}")])
    with _open(args) as client:
        items = fetch_samples(client, args)
    if args.output in ("json", "yaml"):
        print(dump({"items": items}, args.output), end="" if args.output == "yaml" else "\n")
        return 0
    if not items:
        print(f"No {'' if args.state == 'all' else args.state + ' '}unseen samples for job "
              f"{args.namespace}/{args.job}.", file=sys.stderr)  # fmt: skip
        return 0
    print(samples_table(items))
    return 0


# -- label -----------------------------------------------------------------------------------------


def read_labels(given: str, stdin: Any = None) -> dict[str, Any]:
    """The labels of a file (``-``: stdin): a JSON map ``{"id": label}``, or CSV lines ``id,label``
    (an ``id,label`` header line and blank lines are skipped). Errors name the file and line."""
    name = "<stdin>" if given == "-" else given
    try:
        text = (stdin or sys.stdin).read() if given == "-" else Path(given).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError([("", f"cannot read {name}: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ValidationError([("", f"{name} is not UTF-8 text")]) from None
    if text.lstrip().startswith("{"):
        try:
            labels = json.loads(text)
        except ValueError as exc:
            raise ValidationError([("", f"{name} is not valid JSON: {exc}")]) from None
        if not isinstance(labels, dict):
            raise ValidationError([("", f"{name}: expected a JSON map of sample id to label")])
        return labels
    labels = {}
    for number, fields in enumerate(csv.reader(io.StringIO(text)), 1):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != 2 or not fields[0].strip():
            raise ValidationError([("", f"{name} line {number}: expected id,label")])
        sid, label = fields[0].strip(), fields[1].strip()
        if number == 1 and (sid, label) == ("id", "label"):
            continue
        if sid in labels:
            raise ValidationError([("", f"{name} line {number}: sample {sid!r} is labelled twice")])
        labels[sid] = label_from_text(label)
    if not labels:
        raise ValidationError([("", f"{name} holds no labels")])
    return labels


def cmd_label(args: argparse.Namespace) -> int:
    forms = [args.file is not None, args.predicted is not None, args.id is not None]
    if sum(forms) != 1:
        raise ValidationError(
            [("", "give ID LABEL, --file F, or --predicted X --label Y (one of the three)")]
        )
    if args.id is not None and args.label_arg is None:
        raise ValidationError([("", f"give the label of sample {args.id}: lifelong kb label JOB ID LABEL")])
    if (args.predicted is not None) != (args.label is not None):
        raise ValidationError([("", "--predicted and --label go together")])
    with _open(args) as client:
        where = f"job {args.namespace}/{args.job}"
        if args.predicted is not None:
            body = {"predicted": label_from_text(args.predicted), "label": label_from_text(args.label)}
            count = int(client.request("POST", _path(args, "labels"), body)["labelled"])
            print(f"labelled {count} samples predicted {args.predicted} of {where} as {args.label}")
            return 0
        labels: dict[str, Any] = (
            read_labels(args.file) if args.file is not None else {args.id: label_from_text(args.label_arg)}
        )
        count = 0
        items = list(labels.items())
        for start in range(0, len(items), LABELS_PER_REQUEST):
            chunk: dict[str, Any] = {"labels": dict(items[start : start + LABELS_PER_REQUEST])}
            try:
                count += int(client.request("POST", _path(args, "labels"), chunk)["labelled"])
            except LifelongError as exc:
                if not count:
                    raise
                raise PartlyLabelled(f"{count} samples of {where} were labelled, then: {exc}") from None
    print(f"labelled {count} samples of {where}")
    return 0


# -- summary ---------------------------------------------------------------------------------------


def cmd_summary(args: argparse.Namespace) -> int:
    with _open(args) as client:
        summary = client.request("GET", _path(args, "summary"))
    if args.output in ("json", "yaml"):
        print(dump(summary, args.output), end="" if args.output == "yaml" else "\n")
        return 0
    print(f"Job:               {args.namespace}/{args.job}")
    print("\n".join(kb_lines(summary if isinstance(summary, dict) else {})))
    return 0


# -- registration ----------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    config.add_flags(p)
    p.add_argument("job", metavar="JOB", help="the LifelongLearningJob's name")
    p.add_argument(
        "--request-timeout", type=float, metavar="SECONDS", help="how long to wait for the GM (default 30)"
    )


def register_kb_client(kb_sub: Any) -> None:
    """Add ``samples``, ``label`` and ``summary`` to the ``lifelong kb`` group's subparsers."""
    p = kb_sub.add_parser(
        "samples",
        help="list a job's unseen samples in the knowledge base",
        description="List the unseen samples inference found for a job (in the order received), with "
        "what the model predicted and any label given.",
    )
    _common(p)
    p.add_argument("--state", choices=STATES, default="all", help="only samples in this state (default all)")
    p.add_argument("--predicted", metavar="X", help="only samples the model predicted as X")
    p.add_argument("--limit", type=int, default=1000, metavar="N", help="at most N samples (default 1000)")
    p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    p.set_defaults(handler=cmd_samples)

    p = kb_sub.add_parser(
        "label",
        help="label a job's unseen samples: ID LABEL, --file F, or --predicted X --label Y",
        description="Label unseen samples of a job. The labelled samples are then appended to the "
        "job's Dataset on its node (which counts as new data for the train trigger). A whole number "
        "is sent as a number; quote it ('\"3\"') to keep it text.",
    )
    _common(p)
    p.add_argument("id", metavar="ID", nargs="?", help="the sample's id")
    p.add_argument("label_arg", metavar="LABEL", nargs="?", help="its label")
    p.add_argument(
        "--file", "-f", metavar="F", help="CSV lines id,label, or a JSON map {id: label}; - for stdin"
    )
    p.add_argument("--predicted", metavar="X", help="label every unlabelled sample predicted as X ...")
    p.add_argument("--label", metavar="Y", help="... as Y")
    p.set_defaults(handler=cmd_label)

    p = kb_sub.add_parser(
        "summary",
        help="a job's knowledge base: models, classes, unseen and labelled samples",
    )
    _common(p)
    p.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    p.set_defaults(handler=cmd_summary)


def _subparsers(parser: argparse.ArgumentParser) -> Any:
    for action in parser._actions:  # argparse keeps a parser's subcommands here only
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def register(sub: Any) -> None:
    """Add the client commands to ``lifelong kb``: to the group ``lifelong kb serve`` made
    (``cloud/kb/commands.py``, registered first), or to a new one in an installation without
    the GM."""
    group = sub.choices.get("kb")
    kb_sub = _subparsers(group) if group is not None else None
    if kb_sub is None:
        group = sub.add_parser("kb", help="the knowledge base: a job's unseen samples and their labels")
        kb_sub = group.add_subparsers(dest="kb_command", metavar="COMMAND", required=True)
    register_kb_client(kb_sub)
