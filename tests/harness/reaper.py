"""Every process the harness starts is registered here, and the end of the test session kills
any that is still alive (``tests/conftest.py``). A fixture whose set-up fails after it started
a process never reaches its teardown; without this, one failing test left LCs behind that
kept reconnecting to brokers long gone."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading

_lock = threading.Lock()
_started: list[subprocess.Popen[bytes]] = []


def started(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """Register ``proc`` (returned as is); finished ones are forgotten as new ones come."""
    with _lock:
        _started[:] = [p for p in _started if p.poll() is None]
        _started.append(proc)
    return proc


def reap() -> int:
    """SIGKILL every registered process still alive (its process group too, if it leads one);
    returns how many there were."""
    with _lock:
        alive = [p for p in _started if p.poll() is None]
        _started.clear()
    for proc in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    return len(alive)
