"""The ``lifelong`` command: one entry point, one sub-command per component.

Each component registers its own sub-commands through a ``register(subparsers)`` function in
its ``commands`` module (``lifelong.client.commands`` for the kubectl-like client of the GM,
``lifelong.tail`` for ``lifelong tail``); this dispatcher imports them by name with importlib,
and each keeps its heavy imports inside its handlers, so that ``lifelong broker`` does not pay
for importing the GM, and so that ``cloud`` and ``edge`` stay independent of each other.

Output piped into a reader that stops early (``lifelong get ll -o json | head``) ends the command
quietly with status 141 (128 + SIGPIPE, what a shell reports for kubectl or ``cat`` there): a
``BrokenPipeError`` on a closed stdout is caught here, for every sub-command, and so is a stdout
whose reader left while the last write was cut short (which raises nothing). SIGPIPE itself stays
ignored (Python's default), so that the GM, the LC and the broker see a closed socket as an
error to handle rather than being killed by the signal.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
import sys
from collections.abc import Sequence

from lifelong import __version__

# Modules that contribute sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "lifelong.broker.commands",
    "lifelong.cloud.commands",
    "lifelong.cloud.kb.commands",
    "lifelong.client.commands",
    "lifelong.edge.commands",
    "lifelong.tail",
    "lifelong.demo",
)

# Each command and the modules that register it (in COMMAND_MODULES' order): ``lifelong lc``
# builds its parser from ``lifelong.edge.commands`` alone, so the LC's process never imports the
# GM, the broker or the client (about 10 MiB of its idle RSS; docs/performance.md), and a client
# command (``lifelong get``) does not import the broker's amqtt nor the GM's API server to build
# its parser (about 0.3 s of CPU at each start). A command not listed here, and ``lifelong
# --help``, build the whole parser. tests/unit/test_cli_dispatch.py checks that this map names
# exactly the commands each module registers.
COMMAND_OWNERS: dict[str, tuple[str, ...]] = {
    "broker": ("lifelong.broker.commands",),
    "gm": ("lifelong.cloud.commands",),
    "kb": ("lifelong.cloud.kb.commands", "lifelong.client.commands"),
    **{
        name: ("lifelong.client.commands",)
        for name in ("apply", "get", "nodes", "describe", "delete", "config", "logs")
    },
    "lc": ("lifelong.edge.commands",),
    "tail": ("lifelong.tail",),
    "demo": ("lifelong.demo",),
}


EXIT_BROKEN_PIPE = 128 + 13
"""Status when stdout's reader went away: 128 + SIGPIPE, as a shell shows for a process it killed."""


class UserError(Exception):
    """A mistake of the user's: printed as one line, exit status 2."""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command; with ``argv`` naming one of ``COMMAND_OWNERS``, only
    that sub-command's (the same parser for those arguments, without importing the others)."""
    owners = COMMAND_OWNERS.get(_command_of(argv)) if argv is not None else None
    parser = argparse.ArgumentParser(
        prog="lifelong",
        description="Edge-cloud lifelong learning over MQTT (Sedna-compatible).",
    )
    parser.add_argument("--version", action="version", version=f"lifelong {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default: INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in owners or COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # component not built yet
            raise
        module.register(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str:
    """The sub-command ``argv`` names: its first word that is not an option (nor the value of
    ``--log-level``); "" if none."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        status = int(handler(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is handled, not at the interpreter's exit
        if _stdout_gone():
            # The reader left before the end: a write the kernel cut short (the pipe took part
            # of it) raises nothing in Python's buffered writer, so look, as a failed write would.
            _quiet_stdout()
            return EXIT_BROKEN_PIPE
        return status
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Errors of the user's are raised as LifelongError subclasses with a clear message.
        from lifelong.common.errors import LifelongError

        if isinstance(exc, LifelongError):
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        raise


def _stdout_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has gone: a ``BrokenPipeError`` of
    another pipe or socket is a failure to report, not the end of the output."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing what is still buffered at exit cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
