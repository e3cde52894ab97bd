"""``lifelong lc``: the Local Controller's command line (registered by the ``lifelong`` CLI).

Runs in the foreground until SIGTERM or SIGINT (systemd's ``Type=simple``), logging to
stderr (the journal under systemd). Flags, environment variables and config-file keys are
listed in ``lifelong.edge.config``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("lifelong.edge")


def register(subparsers: Any) -> None:
    from lifelong.edge.config import add_arguments

    parser = subparsers.add_parser(
        "lc",
        help="run the edge Local Controller",
        description="Run the edge Local Controller (foreground; SIGTERM stops it cleanly). "
        "Every flag can also be set as LIFELONG_LC_<NAME> or in the --config YAML file.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from lifelong.common.signals import stop_event
    from lifelong.edge import config
    from lifelong.edge.service import LocalController

    settings = config.load(vars(args), config_file=Path(args.config) if args.config else None)
    lc = LocalController(settings)

    stopping = stop_event(also=lc.wake.set)
    lc.start()
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        lc.stop()
    return 0
