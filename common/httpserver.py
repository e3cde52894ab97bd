"""HTTP servers with limits, for the processes' small HTTP APIs (the LC's worker API, the GM API).

Who calls it: ``lifelong.edge.worker_api`` serves its WSGI application with ``WSGIServer``
(waitress); ``lifelong.cloud.api_server`` serves the GM API with ``TLSWSGIServer`` (cheroot),
because that API must serve HTTPS when given a certificate and waitress has no TLS.

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

``TLSWSGIServer`` is cheroot (CherryPy's WSGI server, well kept, pure Python), for the GM API:
it has a TLS adapter built on the standard ``ssl`` module, a fixed pool of ``threads``, a bounded
queue of accepted connections (``connections``; one that finds it full is closed), a
header-size bound, and ``idle_timeout`` as its socket timeout: a keep-alive connection idle
that long is closed, and a request whose headers or body stop coming is dropped after it. Its
one weakness against waitress is that a half-sent request holds one pool thread until that
timeout (never more than ``threads`` of them, never a thread per connection), and a TLS
handshake runs on its accept loop within the same timeout; that is why the LC's worker API,
which takes no token and must stay up for every worker of the host, stays on waitress
(docs/security.md, "HTTP APIs"). Body limits are the application's: the GM API refuses a body
from its ``Content-Length`` before reading it, with its own JSON error.
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


class _ServedInThread:
    """What both servers share: the loop on a thread of its own, started and closed once."""

    name: str
    host: str
    port: int

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._closed = threading.Event()

    def _serve(self) -> None:
        raise NotImplementedError

    def _stop(self, timeout: float) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:  # the loop ends when close() stops it; anything else is a bug
            if not self._closed.is_set():
                log.exception("%s: the HTTP server stopped", self.name)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, end the loop and the request threads."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._stop(timeout)


class WSGIServer(_ServedInThread):
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
        self._start_thread()

    def _serve(self) -> None:
        self._server.run()  # returns once _stop has emptied its map

    def _stop(self, timeout: float) -> None:
        def close_all() -> None:  # runs on the server's own thread, between two polls
            for channel in list(self._map.values()):
                channel.close()

        if self._thread.is_alive():
            try:
                self._server.trigger.pull_trigger(close_all)
            except OSError:  # the loop is already closing its channels (its trigger is gone)
                close_all()
            self._thread.join(timeout)
        else:
            close_all()
        self._server.task_dispatcher.shutdown(timeout=timeout)


class TLSWSGIServer(_ServedInThread):
    """``app`` served by cheroot on ``host:port`` within ``limits``; HTTPS when ``tls`` gives a
    certificate file and its key file (both PEM)."""

    def __init__(
        self,
        app: WSGIApp,
        host: str,
        port: int,
        limits: HTTPLimits,
        *,
        name: str,
        tls: tuple[str, str] | None = None,
    ) -> None:
        # cheroot is imported here, by the GM alone: the LC serves its worker API with waitress, and
        # cheroot (with jaraco and more-itertools) was ~2.5 MiB of the idle LC's RSS
        # (docs/performance.md, "LC").
        from cheroot import wsgi as cheroot_wsgi
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        self.name = name
        self.tls = tls is not None
        server = cheroot_wsgi.Server(
            (host, port),
            app,
            numthreads=limits.threads,
            max=limits.threads,
            request_queue_size=limits.connections,
            timeout=limits.idle_timeout,
            shutdown_timeout=5,
            accepted_queue_size=limits.connections,
            accepted_queue_timeout=1,
            server_name=name,
        )
        server.error_log = self._error_log  # type: ignore[method-assign]  # cheroot's own messages into our log, not stderr
        server.max_request_header_size = limits.max_header
        server.max_request_body_size = 0  # the application refuses from Content-Length (JSON)
        if tls is not None:
            # loads both files now: a wrong path or key is a startup error, not a failed request
            server.ssl_adapter = BuiltinSSLAdapter(tls[0], tls[1])
        server.prepare()  # binds now: the port is known and a busy one fails here
        self._server = server
        self.host = host
        self.port = int(server.bind_addr[1])
        self._start_thread()

    def _error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        """cheroot's messages: a client that dropped its connection or spoke plain HTTP to the
        TLS port is its own business (debug); an error inside the server is ours (with its
        traceback, as it is a bug)."""
        if level >= logging.ERROR:
            log.error("%s: %s", self.name, msg, exc_info=traceback)
        else:
            log.debug("%s: %s", self.name, msg)

    def _serve(self) -> None:
        self._server.serve()  # returns once _stop has called stop()

    def _stop(self, timeout: float) -> None:
        self._server.stop()  # also ends the request threads that prepare() started
        if self._thread.is_alive():
            self._thread.join(timeout)
