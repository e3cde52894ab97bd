"""Sub-commands of the cloud side: ``lifelong gm`` and the kubectl-like client commands.

Registered by the ``lifelong`` dispatcher (``cli/__main__.py``) through ``register``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from lifelong.cloud.cli import add_client_commands
from lifelong.common.errors import ConfigError

log = logging.getLogger(__name__)


def cmd_gm(args: argparse.Namespace) -> int:
    from lifelong.cloud.service import GMService, GMSettings

    password = None
    if args.password_file:
        try:
            password = Path(args.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --password-file: {exc}") from None
    settings = GMSettings(
        broker=args.broker,
        store=args.store,
        state_path=args.state,
        kubeconfig=args.kubeconfig,
        api_host=args.api_host,
        api_port=args.api_port,
        prefix=args.prefix,
        codec=args.codec,
        client_id=args.client_id,
        username=args.username,
        password=password,
        workers=args.workers,
        resend_base=args.resend_base,
        resend_cap=args.resend_cap,
        backoff_base=args.job_backoff_base,
        backoff_cap=args.job_backoff_cap,
        lc_server=args.lc_server,
        kb_server=args.kb_server,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("got signal %d; shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service = GMService(settings)
    try:
        service.start()
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()
    return 0


def register(sub: Any) -> None:
    from lifelong.cloud.api_server import DEFAULT_API_HOST, DEFAULT_API_PORT
    from lifelong.cloud.controllers.lifelonglearning.workerenv import DEFAULT_KB_SERVER, DEFAULT_LC_SERVER
    from lifelong.common.topics import DEFAULT_PREFIX

    p = sub.add_parser("gm", help="run the cloud Global Manager")
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument(
        "--store",
        default="sqlite:lifelong-gm.db",
        help="sqlite:PATH (standalone, the default: sqlite:lifelong-gm.db) or kubernetes",
    )
    p.add_argument("--state", help="the GM's bookkeeping database (default: STORE_PATH.gmstate)")
    p.add_argument("--kubeconfig", help="kubeconfig file for --store kubernetes (default: in-cluster)")
    p.add_argument(
        "--api-host", default=DEFAULT_API_HOST, help=f"HTTP API address (default {DEFAULT_API_HOST})"
    )
    p.add_argument(
        "--api-port",
        type=int,
        default=DEFAULT_API_PORT,
        help=f"HTTP API port, -1 for none (default {DEFAULT_API_PORT})",
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")
    p.add_argument("--codec", choices=["msgpack", "json"], default="msgpack", help="codec of sent messages")
    p.add_argument("--client-id", help="MQTT client id (default lifelong-gm-HOST-PID)")
    p.add_argument("--username", help="broker user name")
    p.add_argument("--password-file", help="file holding the broker password")
    p.add_argument("--workers", type=int, default=4, help="controller threads (default 4)")
    p.add_argument("--resend-base", type=float, default=2.0, help="first resend wait, seconds (default 2)")
    p.add_argument("--resend-cap", type=float, default=60.0, help="longest resend wait, seconds (default 60)")
    p.add_argument(
        "--job-backoff-base",
        type=float,
        default=10.0,
        help="retry wait after a failed stage, seconds (default 10)",
    )
    p.add_argument("--job-backoff-cap", type=float, default=360.0, help="longest retry wait (default 360)")
    p.add_argument("--lc-server", default=DEFAULT_LC_SERVER, help="LC_SERVER given to workers")
    p.add_argument("--kb-server", default=DEFAULT_KB_SERVER, help="KB_SERVER given to workers")
    p.set_defaults(handler=cmd_gm)
    add_client_commands(sub)
