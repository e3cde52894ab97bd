"""The ``lifelong`` command: one entry point, one sub-command per component.

Each component registers its own sub-commands through a ``register(subparsers)`` function in
its ``commands`` module (``lifelong.client.commands`` for the kubectl-like client of the GM,
``lifelong.tail`` for ``lifelong tail``); this dispatcher imports them by name with importlib,
and each keeps its heavy imports inside its handlers, so that ``lifelong broker`` does not pay
for importing the GM, and so that ``cloud`` and ``edge`` stay independent of each other.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from lifelong import __version__

# Modules that contribute sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "lifelong.broker.commands",
    "lifelong.cloud.commands",
    "lifelong.client.commands",
    "lifelong.edge.commands",
    "lifelong.tail",
    "lifelong.demo",
)


class UserError(Exception):
    """A mistake of the user's: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
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
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # component not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
        return int(handler(args) or 0)
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


if __name__ == "__main__":
    sys.exit(main())
