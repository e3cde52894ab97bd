"""What ``BusClient.publish`` returns: a ticket that settles when the broker confirms the
message (PUBACK for QoS 1, the write for QoS 0), plus the client's counters.

The bus client creates and settles tickets; applications wait on them (``wait``) or chain
work onto them (``add_done_callback``), e.g. the LC's outbox marks a report as sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from lifelong.common.errors import BusError, PublishTimeout

log = logging.getLogger("lifelong.common.bus")

DoneCallback = Callable[["PublishTicket"], None]


class PublishTicket:
    """One published message on its way to the broker.

    ``done`` is True once the broker confirmed it. If the client is closed first, the ticket
    settles with ``error`` set (a ``NotConnected``) instead; ``wait`` raises that error.
    Callbacks run exactly once, when the ticket settles either way: on the bus client's
    network thread (so they must not block), or at once in the caller's thread if the ticket
    had already settled.
    """

    __slots__ = ("_callbacks", "_done", "_error", "_event", "_lock", "mid", "network_thread", "qos", "topic")

    def __init__(
        self, mid: int, topic: str, qos: int, *, network_thread: threading.Thread | None = None
    ) -> None:
        self.mid = mid
        self.topic = topic
        self.qos = qos
        self.network_thread = network_thread
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._done = False
        self._error: BusError | None = None
        self._callbacks: list[DoneCallback] = []

    def __repr__(self) -> str:
        state = "done" if self._done else ("failed" if self._error else "pending")
        return f"<PublishTicket mid={self.mid} topic={self.topic!r} qos={self.qos} {state}>"

    @property
    def done(self) -> bool:
        """The broker confirmed the message."""
        return self._done

    @property
    def error(self) -> BusError | None:
        """Why the message will never be confirmed through this client, if it won't."""
        return self._error

    @property
    def settled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the broker confirmed the message.

        Raises ``PublishTimeout`` after ``timeout`` seconds (None: wait forever), or the error
        the ticket settled with. Must not be called on the network thread (from a handler or
        callback): the confirmation could never arrive, so that raises ``RuntimeError``.
        """
        if self.network_thread is not None and threading.current_thread() is self.network_thread:
            raise RuntimeError("PublishTicket.wait() on the bus network thread would deadlock")
        if not self._event.wait(timeout):
            raise PublishTimeout(
                f"broker did not confirm message mid={self.mid} to {self.topic!r} within {timeout}s"
            )
        if self._error is not None:
            raise self._error

    def add_done_callback(self, fn: DoneCallback) -> None:
        """Call ``fn(ticket)`` when the ticket settles (at once if it already has)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        self._run(fn)

    def settle(self, error: BusError | None = None) -> None:
        """Complete the ticket: confirmed (``error`` None) or failed with ``error``.

        Called by the bus client when the broker confirms or the message is lost (and by tests);
        the first call wins, later calls do nothing."""
        with self._lock:
            if self._event.is_set():
                return
            self._done = error is None
            self._error = error
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            self._run(fn)

    def _run(self, fn: DoneCallback) -> None:
        try:
            fn(self)
        except Exception:
            log.exception("done callback %r of %r failed", fn, self)


@dataclass(frozen=True, slots=True)
class BusStats:
    """A snapshot of one client's counters since it was created."""

    connect_attempts: int = 0
    """TCP/TLS connects tried, successful or not (a bounded rate of these proves no busy loop)."""
    connects: int = 0
    """Sessions established (CONNACK accepted)."""
    reconnects: int = 0
    """Sessions established after the first one."""
    published: int = 0
    """Messages handed to the client (``publish`` returned a ticket)."""
    acked: int = 0
    """Tickets settled by the broker's confirmation."""
    received: int = 0
    """Messages received from the broker."""
    handler_errors: int = 0
    """Exceptions raised by message handlers or callbacks (logged and swallowed)."""
