"""``lifelong logs WORKER [-f] [--tail N]``: a worker's log, fetched from its edge node through the GM.

Who calls it: ``lifelong.client.commands.register`` adds the sub-command. It asks the GM's API
(``GET /api/v1/Worker/{ns}/{name}/log``), which asks the worker's node over the bus
(docs/protocol.md, "log") and answers with at most 64 KiB of the log, its offsets and whether
the worker still runs. Like kubectl logs:

* without ``--tail``: everything the node still keeps of the log (it keeps about the last
  1-2 MiB), fetched in pieces;
* ``--tail N``: the last N lines (as many as fit in 64 KiB; a note on stderr says when fewer);
* ``-f``: then asks every second for what came after the last byte printed, until the worker
  has ended and everything is printed (or Ctrl-C). Output the node rotated away between two
  asks is skipped, with a note on stderr.

Errors are one line with a non-zero exit status: an unknown worker or one without a log on its
node (404), a node that does not answer within ``--request-timeout`` (the GM's 504), a GM that
cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any
from urllib.parse import quote, urlencode

from lifelong.client import config
from lifelong.client.api import Client, from_args

FOLLOW_INTERVAL = 1.0
"""Seconds between two asks of ``-f`` when nothing new was there."""
DEFAULT_REQUEST_TIMEOUT = 10


class _Printer:
    """Writes the log's pieces to stdout, noting on stderr what could not be shown."""

    def __init__(self) -> None:
        self.next: int | None = None  # the offset after the last byte printed

    def show(self, answer: dict[str, Any]) -> None:
        start, end = int(answer["start"]), int(answer["end"])
        if self.next is not None and start > self.next:
            print(
                f"[lifelong logs: {start - self.next} bytes were rotated away on the node]", file=sys.stderr
            )
        sys.stdout.write(answer.get("data", ""))
        sys.stdout.flush()
        self.next = end


def fetch(client: Client, ns: str, name: str, **params: Any) -> dict[str, Any]:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    answer: dict[str, Any] = client.request("GET", f"/api/v1/Worker/{quote(ns)}/{quote(name)}/log?{query}")
    return answer


def cmd_logs(args: argparse.Namespace) -> int:
    timeout = args.request_timeout
    with from_args(args, timeout + 10) as client:
        return _print_log(args, client, timeout)


def _print_log(args: argparse.Namespace, client: Client, timeout: int) -> int:
    out = _Printer()

    def ask(**params: Any) -> dict[str, Any]:
        return fetch(client, args.namespace, args.worker, timeout=timeout, **params)

    try:
        if args.tail is not None and args.tail >= 0:
            answer = ask(tail=args.tail)
            out.show(answer)
            if answer.get("truncated"):
                print(
                    f"[lifelong logs: fewer than {args.tail} lines fit in one answer; shown from the "
                    "last that did]",
                    file=sys.stderr,
                )
        else:
            answer = ask()
            out.show(answer)
            while answer["end"] < answer["size"]:
                before = answer["end"]
                answer = ask(offset=before)
                out.show(answer)
                if answer["end"] <= before:
                    break  # no progress: never loop on the same bytes
        while args.follow and (answer["running"] or answer["end"] < answer["size"]):
            if answer["end"] >= answer["size"]:
                time.sleep(FOLLOW_INTERVAL)
            answer = ask(offset=answer["end"])
            out.show(answer)
    except BrokenPipeError:
        # ``lifelong logs W | head``: the reader is gone; end quietly (stdout's flush at exit too).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "logs",
        help="print a worker's log, fetched from its edge node (like kubectl logs)",
        description="Print the log (stdout and stderr) of a worker, e.g. JOB-train-1, fetched from "
        "the edge node that runs or ran it, through the GM and the bus. The node keeps about the last "
        "1-2 MiB of each worker's output.",
    )
    p.add_argument("worker", help="the worker's name: JOB-train|eval|deploy-ROUND")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new output until the worker ends"
    )
    p.add_argument("--tail", type=int, help="only the last N lines (-1: all)")
    p.add_argument(
        "--request-timeout",
        type=int,
        default=DEFAULT_REQUEST_TIMEOUT,
        choices=range(1, 61),
        metavar="SECONDS",
        help=f"how long the node may take to answer (1-60, default {DEFAULT_REQUEST_TIMEOUT})",
    )
    config.add_flags(p)
    p.set_defaults(handler=cmd_logs)
