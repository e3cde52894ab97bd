"""Waiting on conditions with deadlines: the only way tests wait (no fixed sleeps)."""

from __future__ import annotations

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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
