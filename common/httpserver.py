"""An HTTP server with limits, for the processes' small HTTP APIs (the LC's worker API).

Who calls it: ``lifelong.edge.worker_api`` serves its WSGI application with ``WSGIServer``.

The server is waitress, a well-kept pure-Python WSGI server, rather than the standard library's
``http.server``, which trusts ``Content-Length`` (a ``-1`` made it read a 5 MB body to the end
of the connection), reads whole bodies before anyone can refuse them, has no idle or header
timeout and starts one thread per connection (600 half-sent requests kept 131 threads alive).
Waitress does what we would otherwise write:

* a ``Content-Length`` that is not a decimal number is refused with 400 before the body;
* a body at or over ``max_body`` bytes is refused with 413 from its ``Content-Length`` (or
  while a chunked body arrives), before it is read; a header block over ``max_header`` too;
* its connections are multiplexed on one thread (``select``) and requests run on a fixed
  pool of ``threads``: a slow or half-sent request costs a socket, never a thread;
* ``idle_timeout``: a connection with no activity (idle keep-alive, or a request whose
  headers or body stopped coming) is closed after that many seconds;
* at most ``connections`` connections at once; further ones wait in the kernel's backlog.

Waitress was chosen over an ASGI framework and server because both processes are threaded
(docs/architecture.md): a WSGI application runs on the pool's threads and calls the stores as
every other thread does, without a second concurrency model in the process. The server's own
loop runs on one thread made here (``serve``), and ``close`` ends it from any thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from waitress.server import create_server

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class HTTPLimits:
    """The bounds of one server; each is documented with the API that uses it."""

    max_body: int = 1 << 20
    """Bytes: a longer body is refused (413) from its Content-Length, before it is read."""
    max_header: int = 16 * 1024
    """Bytes of the request line and headers together (431/400 beyond)."""
    idle_timeout: int = 30
    """Seconds without activity after which a connection is closed (idle or half-sent)."""
    connections: int = 64
    """Connections served at once; more wait in the listen backlog."""
    threads: int = 2
    """Requests handled at once (the rest wait their turn, their sockets held, no thread)."""


class WSGIServer:
    """``app`` served on ``host:port`` (port 0: any free one, see ``port``) within ``limits``."""

    def __init__(self, app: WSGIApp, host: str, port: int, limits: HTTPLimits, *, name: str) -> None:
        self.name = name
        self._map: dict[int, Any] = {}
        self._server = create_server(
            app,
            map=self._map,
            host=host,
            port=port,
            threads=limits.threads,
            connection_limit=limits.connections,
            channel_timeout=limits.idle_timeout,
            cleanup_interval=max(1, min(30, limits.idle_timeout // 2)),
            max_request_body_size=limits.max_body,
            max_request_header_size=limits.max_header,
            expose_tracebacks=False,
            ident=None,  # no Server header
            clear_untrusted_proxy_headers=True,
        )
        self.host = host
        self.port = int(self._server.effective_port)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = threading.Event()

    def _run(self) -> None:
        try:
            self._server.run()
        except Exception:  # the loop ends when close() empties its map; anything else is a bug
            if not self._closed.is_set():
                log.exception("%s: the HTTP server stopped", self.name)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, end the loop and the request threads."""
        if self._closed.is_set():
            return
        self._closed.set()

        def close_all() -> None:  # runs on the server's own thread, between two polls
            for channel in list(self._map.values()):
                channel.close()

        if self._thread.is_alive():
            self._server.trigger.pull_trigger(close_all)
            self._thread.join(timeout)
        else:
            close_all()
        self._server.task_dispatcher.shutdown(timeout=timeout)
