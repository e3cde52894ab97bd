"""The cloud side's sub-command: ``lifelong gm``, which runs the Global Manager.

Registered by the ``lifelong`` dispatcher (``cli/__main__.py``) through ``register``.

``lifelong gm`` also reads a few options from ``LIFELONG_GM_*`` environment variables (the
Kubernetes Deployment sets them); a flag given on the command line wins. The list is in
``GM_ENV`` and in ``lifelong gm --help``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import Any

from lifelong.common.errors import ConfigError
from lifelong.common.secretfile import read_secret_file
from lifelong.common.signals import stop_event
from lifelong.common.statemachine import DEFAULT_RETRY_LIMIT, MAX_RETRY_LIMIT

log = logging.getLogger(__name__)


#: Environment variable -> the ``lifelong gm`` flag it gives a default to (flags win).
GM_ENV: dict[str, str] = {
    "LIFELONG_GM_BROKER": "--broker",
    "LIFELONG_GM_STORE": "--store",
    "LIFELONG_GM_STATE": "--state",
    "LIFELONG_GM_PREFIX": "--prefix",
    "LIFELONG_GM_USERNAME": "--username",
    "LIFELONG_GM_PASSWORD_FILE": "--password-file",
    "LIFELONG_GM_TLS_CA_FILE": "--tls-ca-file",
    "LIFELONG_GM_TLS_CERT": "--tls-cert",
    "LIFELONG_GM_TLS_KEY": "--tls-key",
    "LIFELONG_GM_API_HOST": "--api-host",
    "LIFELONG_GM_API_PORT": "--api-port",
    "LIFELONG_GM_TOKEN_FILE": "--token-file",
    "LIFELONG_GM_API_TLS_CERT": "--api-tls-cert",
    "LIFELONG_GM_API_TLS_KEY": "--api-tls-key",
    "LIFELONG_GM_LEASE_NAME": "--lease-name",
    "LIFELONG_GM_KB_DIR": "--kb-dir",
    "LIFELONG_GM_KB_FILES": "--kb-files",
    "LIFELONG_GM_KB_S3_ENDPOINT": "--kb-s3-endpoint",
    "LIFELONG_GM_KB_URL": "--kb-url",
    "LIFELONG_GM_KB_TOKEN_FILE": "--kb-token-file",
}

GM_EPILOG = (
    "environment (a flag on the command line wins):\n"
    + "".join(f"  {var:<27} {flag}\n" for var, flag in GM_ENV.items())
    + "\nKubernetes mode (--store kubernetes): every replica campaigns for the Lease LEASE_NAME in\n"
    "the namespace POD_NAMESPACE (default: default) as POD_NAME (else HOSTNAME); only the leader\n"
    "connects to the broker and runs the controllers. A leader that loses the Lease exits with\n"
    "status 1 so that Kubernetes restarts it as a follower. The HTTP API then serves only\n"
    "/healthz and /metrics (use kubectl for resources)."
)


def _whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` (to ``high``, when given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _env(flag: str, default: str | None) -> str | None:
    """The default of ``flag``: its ``LIFELONG_GM_*`` variable when set (and not empty), else ``default``."""
    for var, name in GM_ENV.items():
        if name == flag and os.environ.get(var):
            return os.environ[var]
    return default


def _knowledge_base(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The GM's knowledge base (None: none), the ``KBServer`` it runs (None: none) and the
    ``KB_SERVER`` its workers get: ``--kb-dir`` runs the KB in this process, serving its API on
    ``--kb-host:--kb-port`` with the GM API's tokens; ``--kb-url`` uses one elsewhere (the token
    of ``--kb-token-file``); ``--kb-server`` overrides what workers are told."""
    from lifelong.cloud.controllers.lifelonglearning.workerenv import DEFAULT_KB_SERVER

    if args.kb_dir and args.kb_url:
        raise ConfigError(
            "give --kb-dir (run the knowledge base here) or --kb-url (use one elsewhere), not both"
        )
    if (args.kb_files or args.kb_s3_endpoint) and not args.kb_dir:
        raise ConfigError("--kb-files and --kb-s3-endpoint go with --kb-dir")
    if args.kb_dir:
        from lifelong.cloud.kb.commands import kb_files
        from lifelong.cloud.kb.server import KBServer

        files = kb_files(args.kb_files, args.kb_s3_endpoint)
        server = KBServer(args.kb_dir, args.kb_host, args.kb_port, token_file=args.token_file, files=files)
        return server.kb, server, args.kb_server or f"http://{args.kb_host}:{args.kb_port}"
    if args.kb_url:
        from lifelong.cloud.kb.client import RemoteKnowledgeBase

        token = read_secret_file(args.kb_token_file) if args.kb_token_file else None
        return RemoteKnowledgeBase(args.kb_url, token=token), None, args.kb_server or args.kb_url
    return None, None, args.kb_server or DEFAULT_KB_SERVER


def cmd_gm(args: argparse.Namespace) -> int:
    from lifelong.cloud.service import GMService, GMSettings

    if not args.broker:
        raise ConfigError("lifelong gm needs --broker mqtt://HOST:PORT (or LIFELONG_GM_BROKER)")
    password = read_secret_file(args.password_file) if args.password_file else None
    kb, kb_server, kb_url = _knowledge_base(args)
    service: GMService | None = None
    try:
        settings = GMSettings(
            broker=args.broker,
            store=args.store,
            state_path=args.state,
            kubeconfig=args.kubeconfig,
            api_host=args.api_host,
            api_port=args.api_port,
            token_file=args.token_file,
            api_tls_cert=args.api_tls_cert,
            api_tls_key=args.api_tls_key,
            api_allow_anonymous=args.api_allow_anonymous,
            prefix=args.prefix,
            codec=args.codec,
            client_id=args.client_id,
            username=args.username,
            password=password,
            tls_ca_file=args.tls_ca_file,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            workers=args.workers,
            resend_base=args.resend_base,
            resend_cap=args.resend_cap,
            backoff_base=args.job_backoff_base,
            backoff_cap=args.job_backoff_cap,
            retry_limit=args.job_retry_limit,
            max_nodes=args.max_nodes,
            lc_server=args.lc_server,
            kb_server=kb_url,
            leader_election=not args.no_leader_election,
            lease_name=args.lease_name,
        )
        stop = stop_event()
        service = GMService(settings, kb=kb)
        if kb_server is not None:
            kb_server.start()
            log.info("the knowledge base serves on %s (its data in %s)", kb_url, args.kb_dir)
        service.start()
        while not stop.wait(0.5):
            if service.lost_leadership.is_set():
                break
    finally:
        if service is not None:
            service.stop()
        if kb_server is not None:
            kb_server.stop()
        elif kb is not None:
            kb.close()
    if service is not None and service.lost_leadership.is_set():
        log.error("exiting with status 1: this GM lost the lease (Kubernetes restarts it as a follower)")
        return 1
    return 0


def register(sub: Any) -> None:
    from lifelong.cloud.api_server import DEFAULT_API_HOST, DEFAULT_API_PORT
    from lifelong.cloud.controllers.lifelonglearning.workerenv import DEFAULT_KB_SERVER, DEFAULT_LC_SERVER
    from lifelong.cloud.kb.commands import add_files_flags
    from lifelong.common.topics import DEFAULT_PREFIX

    p = sub.add_parser(
        "gm",
        help="run the cloud Global Manager",
        epilog=GM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--broker", default=_env("--broker", None), help="mqtt://HOST:PORT or mqtts://HOST:PORT (required)"
    )
    p.add_argument(
        "--store",
        default=_env("--store", "sqlite:lifelong-gm.db"),
        help="sqlite:PATH (standalone, the default: sqlite:lifelong-gm.db) or kubernetes",
    )
    p.add_argument(
        "--state",
        default=_env("--state", None),
        help="the GM's bookkeeping database (default: STORE_PATH.gmstate; ./lifelong-gm-state.db "
        "with --store kubernetes)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file for --store kubernetes (default: in-cluster)")
    p.add_argument(
        "--api-host",
        default=_env("--api-host", DEFAULT_API_HOST),
        help=f"HTTP API address (default {DEFAULT_API_HOST})",
    )
    p.add_argument(
        "--api-port",
        type=int,
        default=_env("--api-port", str(DEFAULT_API_PORT)),
        help=f"HTTP API port, -1 for none (default {DEFAULT_API_PORT})",
    )
    p.add_argument(
        "--token-file",
        default=_env("--token-file", None),
        help="the HTTP API's bearer tokens, lines TOKEN,ROLE,NAME (ROLE read or write); "
        "without it the API takes no token and must listen on loopback",
    )
    p.add_argument(
        "--api-tls-cert",
        default=_env("--api-tls-cert", None),
        help="serve the HTTP API over HTTPS: its certificate (PEM)",
    )
    p.add_argument(
        "--api-tls-key", default=_env("--api-tls-key", None), help="the certificate's private key (PEM)"
    )
    p.add_argument(
        "--api-allow-anonymous",
        action="store_true",
        help="serve the HTTP API without --token-file on a non-loopback --api-host (warned at every start)",
    )
    p.add_argument(
        "--prefix", default=_env("--prefix", DEFAULT_PREFIX), help=f"topic prefix (default {DEFAULT_PREFIX})"
    )
    p.add_argument("--codec", choices=["msgpack", "json"], default="msgpack", help="codec of sent messages")
    p.add_argument(
        "--client-id",
        help="MQTT client id (default lifelong-gm-<random>; brokers that bind ids to user names, as "
        "deploy/mosquitto/ does, replace it by the user name)",
    )
    p.add_argument("--username", default=_env("--username", None), help="broker user name")
    p.add_argument(
        "--password-file", default=_env("--password-file", None), help="file holding the broker password"
    )
    p.add_argument(
        "--tls-ca-file",
        default=_env("--tls-ca-file", None),
        help="mqtts:// only: CA bundle of the broker's certificate (default: system CAs)",
    )
    p.add_argument(
        "--tls-cert",
        default=_env("--tls-cert", None),
        help="mqtts:// only: the GM's client certificate (PEM)",
    )
    p.add_argument("--tls-key", default=_env("--tls-key", None), help="mqtts:// only: its private key (PEM)")
    p.add_argument(
        "--lease-name",
        default=_env("--lease-name", "lifelong-gm"),
        help="--store kubernetes: the Lease the replicas elect a leader with (default lifelong-gm)",
    )
    p.add_argument(
        "--no-leader-election",
        action="store_true",
        help="--store kubernetes: act at once without a Lease (only ever run one replica then)",
    )
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
    p.add_argument(
        "--job-retry-limit",
        type=_whole_number(0, MAX_RETRY_LIMIT),
        default=DEFAULT_RETRY_LIMIT,
        help=f"retries of a failed stage on the same data before its round is given up, 0 to "
        f"{MAX_RETRY_LIMIT} (default {DEFAULT_RETRY_LIMIT})",
    )
    p.add_argument(
        "--max-nodes",
        type=_whole_number(1),
        default=None,
        help="nodes the GM keeps at most; a hello from one more is refused (too_many_nodes) until "
        "lifelong delete node makes room (default 10000)",
    )
    p.add_argument("--lc-server", default=DEFAULT_LC_SERVER, help="LC_SERVER given to workers")
    p.add_argument(
        "--kb-server",
        default=None,
        help="KB_SERVER given to workers (default: the knowledge base of --kb-dir or --kb-url, "
        f"else {DEFAULT_KB_SERVER})",
    )
    p.add_argument(
        "--kb-dir",
        default=_env("--kb-dir", None),
        help="run the knowledge base in this process, its data in this directory (docs/knowledge-base.md)",
    )
    add_files_flags(
        p, "--kb-files", "--kb-s3-endpoint", (_env("--kb-files", None), _env("--kb-s3-endpoint", None))
    )
    p.add_argument(
        "--kb-host", default="127.0.0.1", help="--kb-dir: address of the KB's API (default 127.0.0.1)"
    )
    p.add_argument("--kb-port", type=int, default=9020, help="--kb-dir: port of the KB's API (default 9020)")
    p.add_argument(
        "--kb-url",
        default=_env("--kb-url", None),
        help="use the knowledge base served there (lifelong kb serve), e.g. http://kb:9020",
    )
    p.add_argument(
        "--kb-token-file",
        default=_env("--kb-token-file", None),
        help="--kb-url: a file holding the bearer token the GM sends to the knowledge base",
    )
    p.set_defaults(handler=cmd_gm)
