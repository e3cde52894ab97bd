"""``stop_event``: the event that SIGTERM and SIGINT set, for the long-running commands.

Who calls it: ``lifelong gm``, ``lifelong lc`` and ``lifelong kb serve`` (their ``commands``
modules), from the main thread, before they start their threads; they wait on the event and
then stop in stages (docs/architecture.md, "Shutdown").
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


def stop_event(also: Callable[[], None] | None = None) -> threading.Event:
    """An event set by the first SIGTERM or SIGINT (logged); ``also`` runs in the handler too
    (it must be quick and safe there: setting another event, say)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        if also is not None:
            also()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
