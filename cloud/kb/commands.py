"""``lifelong kb``: the knowledge base's sub-commands; ``lifelong kb serve`` runs the KB.

Registered by the ``lifelong`` dispatcher (``cli/__main__.py``) through ``register``, as
``lifelong gm`` is. ``register`` makes the ``kb`` group; the client sub-commands (``lifelong kb
samples``, ``lifelong kb label``, which talk to the GM's API) are added to the same group by
``cli/client/kb.py``, registered after this module (the cloud side never imports the client).
Heavy imports stay inside the handler.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from lifelong.common.errors import ConfigError
from lifelong.common.signals import stop_event

log = logging.getLogger(__name__)


def kb_files(files: str | None, s3_endpoint: str | None) -> Any:
    """The ``FileStore`` of ``--files`` and ``--s3-endpoint`` (None: the data directory's own)."""
    if files is None:
        if s3_endpoint is not None:
            raise ConfigError("--s3-endpoint goes with --files s3://BUCKET/PREFIX")
        return None
    from lifelong.cloud.kb.files import open_files

    store = open_files(files, s3_endpoint)
    log.info("knowledge-base files in %s", files)
    return store


def cmd_kb_serve(args: argparse.Namespace) -> int:
    from lifelong.cloud.kb.server import KBServer

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    server = KBServer(
        args.data_dir,
        args.host,
        args.port,
        files=kb_files(args.files, args.s3_endpoint),
        token_file=args.token_file,
        allow_anonymous=args.allow_anonymous,
        allow_pickle=args.allow_pickle,
        tls=tls,
    )
    stop = stop_event()
    server.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


def add_files_flags(
    p: argparse.ArgumentParser,
    files: str,
    endpoint: str,
    defaults: tuple[str | None, str | None] = (None, None),
) -> None:
    """The flags of where the KB keeps its files (``lifelong kb serve``, ``lifelong gm``)."""
    p.add_argument(
        files,
        default=defaults[0],
        metavar="DIR_OR_S3_URL",
        help="where the KB keeps model and sample files: a directory, or s3://BUCKET/PREFIX for an "
        "S3-compatible bucket (needs the s3 extra; credentials from AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials; default: the data directory's files/)",
    )
    p.add_argument(
        endpoint,
        default=defaults[1],
        metavar="URL",
        help="the S3-compatible server of an s3:// file store, e.g. http://127.0.0.1:8333 "
        "(default: AWS, or AWS_ENDPOINT_URL_S3)",
    )


def _kb_help(args: argparse.Namespace) -> int:
    args.kb_parser.print_help()
    return 2


def register(sub: Any) -> None:
    from lifelong.cloud.kb.server import DEFAULT_KB_HOST, DEFAULT_KB_PORT

    kb = sub.add_parser("kb", help="the knowledge base: serve it, list and label unseen samples")
    kb.set_defaults(handler=_kb_help, kb_parser=kb)
    group = kb.add_subparsers(dest="kb_command", metavar="KB_COMMAND")
    p = group.add_parser(
        "serve",
        help="run the knowledge-base service (Sedna's KB routes and the native JSON API)",
        description="Serve the knowledge base: Sedna's /knowledgebase routes and /knowledgebase/v1 "
        "(docs/knowledge-base.md). Tables in DATA_DIR/kb.db, files in DATA_DIR/files unless --files.",
    )
    p.add_argument(
        "--host", default=DEFAULT_KB_HOST, help=f"address to listen on (default {DEFAULT_KB_HOST})"
    )
    p.add_argument(
        "--port", type=int, default=DEFAULT_KB_PORT, help=f"port (default {DEFAULT_KB_PORT}; 0: any free)"
    )
    p.add_argument(
        "--data-dir", default="lifelong-kb", help="where the KB keeps its data (default ./lifelong-kb)"
    )
    add_files_flags(p, "--files", "--s3-endpoint")
    p.add_argument(
        "--token-file",
        help="bearer tokens, lines TOKEN,ROLE,NAME (ROLE read or write); without it the KB takes no "
        "token and must listen on loopback",
    )
    p.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="serve without --token-file on a non-loopback --host (warned at every start)",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load the pickled task index Sedna's KBClient posts to /knowledgebase/update: runs any "
        "code in it, so only when every client is trusted (warned at every start)",
    )
    p.add_argument("--tls-cert", help="serve over HTTPS: the certificate (PEM)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM)")
    p.set_defaults(handler=cmd_kb_serve)
