"""Waiting on conditions with deadlines: the only way tests wait (no fixed sleeps)."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(AssertionError):
    """A condition did not come true before its deadline."""


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns a truthy value; return that value.

    Raises ``DeadlineExceeded`` naming ``what`` after ``timeout`` seconds. Polling (not
    sleeping a fixed time) means a fast system passes fast and a slow one still passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


#: Ports handed out, from below Linux's ephemeral range (``ip_local_port_range``, 32768-60999 by
#: default), split between xdist workers. A port the kernel picks (``bind(0)``) comes from the
#: ephemeral range, which every outgoing connection also draws its local port from: between
#: the pick and the server's own bind, a client of another test could take it ("Address already
#: in use"; 1 test in the run before, 5 in the one after, on the shared machine).
_PORTS = range(10000, 32000)
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now, not handed out before by this process."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker) % count if worker.isdigit() else 0
    size = len(_PORTS) // count
    mine = range(_PORTS.start + index * size, _PORTS.start + (index + 1) * size)
    for _ in range(200):
        port = random.choice(mine)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {mine.start}-{mine.stop - 1} after 200 tries")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
