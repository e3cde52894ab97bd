"""Live updates of the web console: one watcher thread per GM and the server-sent event streams.

Who calls it: ``ApiServer`` (``cloud/api_server.py``) makes one ``Watcher`` with its console,
starts it with the server and stops it first when the server stops; ``ConsoleApp`` serves
``GET /ui/events`` with ``Watcher.stream``.

While at least one stream is open, every ``interval`` seconds the watcher computes a digest of what
the pages show, in parts named by topic (``jobs``: the resource versions of jobs, workers and
datasets; ``nodes``: each node's online flag, last hello, outbox depth and unacknowledged count;
``kb``: each job's sample counts and metrics count, read every ``kb_every`` ticks because the KB may
be remote). A part that changed bumps ``version`` and wakes every stream (a
``threading.Condition``), which sends ``event: change`` with ``{"topics": [...], "version": N}``; an
idle stream sends ``: keepalive`` every ``keepalive`` seconds (2: a few bytes each), which is also
when a stream whose browser went away finds out (its write fails), so a page left behind gives its
place back within a few seconds. At most ``max_streams`` streams are open at once (the API server
has that many more threads than the API needs, so streams never starve API requests); ``open``
refuses another. A digest that fails is logged once, counted
(``lifelong_gm_item_failures{loop="console_watch"}``) and tried again next tick. With no stream open
it computes nothing (the digest lists every job, Worker and Dataset: 17-20 % of a GM's CPU at 3,000
nodes, docs/performance.md), and its first digest after that may find changes made meanwhile, which
only makes the new page fetch its content once more.
``stop`` ends every stream at once, so the server's threads are free to stop.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

INTERVAL = 0.5
KEEPALIVE = 2.0
"""Seconds between an idle stream's comments: how soon a stream whose browser left ends."""
MAX_STREAMS = 8
KB_EVERY = 4
RETRY_MS = 2000
TOPICS = ("jobs", "nodes", "kb")
_HISTORY = 256

Digest = Callable[[bool], dict[str, Any]]
"""The digest's parts by topic; its argument says whether to read the KB part this time."""


class Watcher:
    """The one watcher of a GM (see the module docstring)."""

    def __init__(
        self,
        digest: Digest,
        *,
        interval: float = INTERVAL,
        keepalive: float = KEEPALIVE,
        max_streams: int = MAX_STREAMS,
        kb_every: int = KB_EVERY,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.digest, self.interval, self.keepalive = digest, interval, keepalive
        self.max_streams, self.kb_every = max_streams, kb_every
        self.on_failure = on_failure
        self.version = 1
        self._parts: dict[str, Any] = {}
        self._topics: dict[int, tuple[str, ...]] = {}
        self._cond = threading.Condition()
        self._stopped = threading.Event()
        self._streams = 0
        self._thread: threading.Thread | None = None
        self._failing = False
        self._idle = False

    # -- the thread ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None and not self._stopped.is_set():
            self._thread = threading.Thread(target=self._run, name="gm-console-watch", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Whether the thread is (or within ``timeout`` gets) blocked waiting for a page to open,
        computing nothing."""
        with self._cond:
            return self._cond.wait_for(lambda: self._idle, timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        tick = 0
        self.check()  # the baseline: what a change is measured from once pages are open
        while not self._stopped.is_set():
            with self._cond:  # no page open: nothing to tell, so no digest either
                while self._streams == 0 and not self._stopped.is_set():
                    self._idle = True
                    self._cond.notify_all()
                    self._cond.wait()
                self._idle = False
            if self._stopped.is_set():
                return
            self.check(with_kb=tick % self.kb_every == 0)
            tick += 1
            self._stopped.wait(self.interval)

    def check(self, *, with_kb: bool = True) -> tuple[str, ...]:
        """One digest: the topics that changed (a new version when any did)."""
        try:
            parts = self.digest(with_kb)
        except Exception:
            if not self._failing:
                log.exception("the console's watcher cannot compute its digest; trying again")
            self._failing = True
            if self.on_failure is not None:
                self.on_failure()
            return ()
        if self._failing:
            log.info("the console's watcher computes its digest again")
        self._failing = False
        changed = tuple(t for t, v in parts.items() if t in self._parts and self._parts[t] != v)
        self._parts.update(parts)
        if not changed:
            return ()
        with self._cond:
            self.version += 1
            self._topics[self.version] = changed
            self._topics.pop(self.version - _HISTORY, None)
            self._cond.notify_all()
        return changed

    # -- the streams -----------------------------------------------------------------------
    def open(self) -> bool:
        """Take a stream's place; False when ``max_streams`` are open (or the watcher stopped)."""
        with self._cond:
            if self._streams >= self.max_streams or self._stopped.is_set():
                return False
            self._streams += 1
            self._cond.notify_all()  # the watcher, idle while no page was open
            return True

    @property
    def streams(self) -> int:
        return self._streams

    def _close(self) -> None:
        with self._cond:
            self._streams -= 1

    def _changed_since(self, seen: int) -> list[str]:
        found: set[str] = set()
        for v in range(seen + 1, self.version + 1):
            topics = self._topics.get(v)
            if topics is None:
                return list(TOPICS)
            found.update(topics)
        return [t for t in TOPICS if t in found] or list(TOPICS)

    def stream(self, since: int | None) -> Iterator[bytes]:
        """The events of one stream whose place ``open`` took (released when it ends). ``since``:
        the version the browser's page shows; a change is sent at once when it is not current."""
        try:
            yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
            seen = self.version if since is None else since
            while not self._stopped.is_set():
                with self._cond:
                    if self.version == seen:
                        self._cond.wait(self.keepalive)
                    if self._stopped.is_set():
                        return
                    version = self.version
                    topics = self._changed_since(seen) if version != seen else []
                if version == seen:
                    yield b": keepalive\n\n"
                    continue
                seen = version
                data = json.dumps({"topics": topics, "version": version}, separators=(",", ":"))
                yield f"id: {version}\nevent: change\ndata: {data}\n\n".encode()
        finally:
            self._close()
