"""``KBServer``: the knowledge base's HTTP API served on a thread of its own.

Who calls it: ``lifelong kb serve`` (``lifelong.cloud.kb.commands``) and the GM when it runs the
KB beside itself. It serves ``KBApp`` with ``lifelong.common.httpserver.TLSWSGIServer`` (cheroot,
as the GM API: HTTPS when given a certificate and key, bounded threads, connections, headers and
idle time); the app bounds the bodies.

An open KB (no token file) is refused on an address other than loopback unless
``allow_anonymous`` (then warned at every start); ``allow_pickle`` is warned at every start too
(docs/knowledge-base.md, "Security").
"""

from __future__ import annotations

import logging
from pathlib import Path

from lifelong.cloud.api_server import Tokens, load_tokens, loopback
from lifelong.cloud.kb.app import MAX_JSON, KBApp
from lifelong.cloud.kb.files import FileStore
from lifelong.cloud.kb.service import LocalKnowledgeBase
from lifelong.common.errors import ConfigError
from lifelong.common.httpserver import HTTPLimits, TLSWSGIServer

log = logging.getLogger(__name__)

DEFAULT_KB_HOST = "127.0.0.1"
DEFAULT_KB_PORT = 9020
DEFAULT_LIMITS = HTTPLimits(
    max_body=MAX_JSON, max_header=16 * 1024, idle_timeout=30, connections=64, threads=8
)
"""Threads, connections, headers and idle time of the KB's server (bodies: ``KBApp``)."""


class KBServer:
    """The KB of ``kb`` (or of a data directory, its files in ``files`` if given, else in the
    directory's ``files/``) served on ``host:port`` (port 0: a free one)."""

    def __init__(
        self,
        kb: LocalKnowledgeBase | str | Path,
        host: str = DEFAULT_KB_HOST,
        port: int = DEFAULT_KB_PORT,
        *,
        token_file: str | None = None,
        tokens: Tokens | None = None,
        allow_anonymous: bool = False,
        allow_pickle: bool = False,
        tls: tuple[str, str] | None = None,
        limits: HTTPLimits = DEFAULT_LIMITS,
        files: FileStore | None = None,
    ) -> None:
        if token_file is not None:
            tokens = load_tokens(token_file)
        if tokens is None and not loopback(host) and not allow_anonymous:
            raise ConfigError(
                f"the knowledge base would be open to anyone on {host}: give --token-file, listen on "
                "127.0.0.1, or pass --allow-anonymous"
            )
        self._owned = not isinstance(kb, LocalKnowledgeBase)
        self.kb = (
            kb
            if isinstance(kb, LocalKnowledgeBase)
            else LocalKnowledgeBase.open(kb, allow_pickle=allow_pickle, files=files)
        )
        if allow_pickle:
            self.kb.allow_pickle = True
        self.app = KBApp(self.kb, tokens=tokens, max_json=limits.max_body)
        self._server = TLSWSGIServer(self.app, host, port, limits, name="kb", tls=tls)
        self.host = host
        self._started = False
        if tokens is None and not loopback(host):
            log.warning(
                "the knowledge base on %s takes no token (--allow-anonymous): anyone reaching it may write",
                host,
            )
        if self.kb.allow_pickle:
            log.warning(
                "the knowledge base loads pickles posted to /knowledgebase/update (--allow-pickle): whoever "
                "can post there can run code in this process"
            )

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def scheme(self) -> str:
        return "https" if self._server.tls else "http"

    @property
    def url(self) -> str:
        """What ``KB_SERVER`` should be set to for this KB."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self) -> None:
        self._server.start()
        self._started = True
        log.info("knowledge base serving on %s", self.url)

    def stop(self) -> None:
        """Stop serving and close the KB's database if this server opened it. Also when it never
        started: the server binds its port and starts its request threads when it is made."""
        self._server.close()
        if self._owned:
            self.kb.close()
