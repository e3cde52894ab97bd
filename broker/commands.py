"""``lifelong broker``: run the embedded MQTT broker in the foreground."""

from __future__ import annotations

import argparse
from typing import Any

from lifelong.broker.acl import DEFAULT_GM_USER
from lifelong.broker.server import DEFAULT_HOST, DEFAULT_PORT, BrokerSettings, run
from lifelong.common.topics import DEFAULT_PREFIX


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "broker",
        help="run the embedded MQTT 3.1.1 broker (amqtt)",
        description=(
            "Run the embedded MQTT 3.1.1 broker (amqtt) in the foreground until SIGTERM or SIGINT. "
            "SIGHUP re-reads the password file. For production, mosquitto with "
            "deploy/mosquitto/ enforces the same rules."
        ),
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default: {DEFAULT_HOST}; 0.0.0.0 for all IPv4). A "
        "non-loopback address needs --password-file and --acl, or --allow-anonymous",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        help="mosquitto password file (made by mosquitto_passwd); without it any client may connect. "
        "With it, each client's id is replaced by its user name (as mosquitto's "
        "use_username_as_clientid), so no client can take over another's session",
    )
    parser.add_argument(
        "--acl",
        action="store_true",
        help="each node user may only use {prefix}/node/{user}/ (and read "
        "{prefix}/gm/presence); the GM user may use {prefix}/#; "
        "clients without a user name get nothing",
    )
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"topic prefix the ACL protects (default: {DEFAULT_PREFIX})"
    )
    parser.add_argument(
        "--gm-user",
        default=DEFAULT_GM_USER,
        help=f"user name of the Global Manager for the ACL (default: {DEFAULT_GM_USER})",
    )
    parser.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="listen on a non-loopback address without --password-file and --acl (warned at every "
        "start): anyone who reaches the port can then make any edge node run a worker",
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    settings = BrokerSettings(
        host=args.host,
        port=args.port,
        password_file=args.password_file,
        acl=args.acl,
        prefix=args.prefix,
        gm_user=args.gm_user,
        allow_anonymous=args.allow_anonymous,
    )
    return run(settings)
