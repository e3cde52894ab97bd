"""``lifelong get -w``: follow a list of objects by polling it and comparing resourceVersions.

Who calls it: the client's ``get`` (``lifelong.client.commands``) and unit tests.

Why polling: the GM's HTTP API is a small admin interface on loopback (``cloud/api_server.py``,
a thread per request), and the standalone store's change log is not part of the store
interface it is given. Listing one kind every ``interval`` seconds (1 s by default) costs one
SQLite read, holds no server thread, and survives nothing more than a list does. What it cannot
do is show a state an object held for less than one interval: each change seen is the newest
state at the poll. A job's every transition stays in its conditions, which ``describe`` shows
as a timeline.

Each poll compares every object's ``metadata.resourceVersion`` (or, for objects without one,
such as the nodes, the whole object) with the previous poll's; ``emit`` is called for each new
or changed object (``ADDED``/``MODIFIED``, in version order) and, with its last known state,
for each one gone (``DELETED``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

Obj = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]


def version(obj: Obj) -> str:
    """What tells one state of ``obj`` from another: its resourceVersion, else its JSON."""
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return str(rv) if rv is not None else json.dumps(obj, sort_keys=True, default=str)


def _order(obj: Obj) -> tuple[int, str]:
    v = version(obj)
    return (int(v), "") if v.isdigit() else (0, v)


def changes(
    before: dict[str, tuple[str, Obj]], now: Sequence[Obj], key: Callable[[Obj], str]
) -> tuple[list[tuple[EventType, Obj]], dict[str, tuple[str, Obj]]]:
    """The events from ``before`` (key → (version, object)) to the objects ``now``, and the new
    ``before``."""
    after = {key(o): (version(o), o) for o in now}
    events: list[tuple[EventType, Obj]] = []
    for k, (v, o) in sorted(after.items(), key=lambda item: _order(item[1][1])):
        if k not in before:
            events.append(("ADDED", o))
        elif before[k][0] != v:
            events.append(("MODIFIED", o))
    events += [("DELETED", o) for k, (_, o) in before.items() if k not in after]
    return events, after


def follow(
    initial: Sequence[Obj],
    fetch: Callable[[], Sequence[Obj]],
    key: Callable[[Obj], str],
    emit: Callable[[EventType, Obj], None],
    *,
    interval: float,
    duration: float | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Poll ``fetch`` every ``interval`` seconds and ``emit`` what changed since ``initial``,
    for ``duration`` seconds (None: until ``stop`` is set; the CLI never sets it, Ctrl-C ends
    the command)."""
    stop = stop or threading.Event()
    end = None if duration is None else time.monotonic() + duration
    known = {key(o): (version(o), o) for o in initial}
    while True:
        wait = interval if end is None else min(interval, end - time.monotonic())
        if wait <= 0 or stop.wait(wait):
            return
        events, known = changes(known, fetch(), key)
        for type_, obj in events:
            emit(type_, obj)
