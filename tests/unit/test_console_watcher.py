"""The console's watcher (``cloud/console/live.py``) digests only while a page is open.

Its digest lists every job, Worker and Dataset, which cost a GM with 3,000 nodes 17-20 % of its
CPU when nobody was looking (docs/performance.md).
"""

from __future__ import annotations

import threading
from typing import Any

from lifelong.cloud.console.live import Watcher

INTERVAL = 0.002


class Counting:
    """A digest that counts its calls and how many streams were open at each."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.watcher: Watcher | None = None
        self.called = threading.Condition()

    def __call__(self, with_kb: bool) -> dict[str, Any]:
        assert self.watcher is not None
        with self.called:
            self.calls.append(self.watcher.streams)
            self.called.notify_all()
        return {"jobs": 1, "nodes": 1, "kb": 1}

    def wait_calls(self, n: int, deadline: float = 10.0) -> None:
        with self.called:
            assert self.called.wait_for(lambda: len(self.calls) >= n, deadline), (n, len(self.calls))


def test_the_watcher_digests_only_while_a_stream_is_open() -> None:
    digest = Counting()
    watcher = Watcher(digest, interval=INTERVAL)
    digest.watcher = watcher
    watcher.start()
    try:
        # After its baseline the thread blocks until a page opens (a watcher that digests with
        # no page open never gets there).
        assert watcher.wait_idle(10)
        assert digest.calls == [0]
        assert watcher.open()
        stream = watcher.stream(None)
        next(stream)  # the stream's first lines: it is open
        digest.wait_calls(5)
        stream.close()  # the page went away: its place is given back
        assert watcher.streams == 0
        assert watcher.wait_idle(10)  # blocked again: no digest until the next page
        with digest.called:
            calls = list(digest.calls)
        assert all(streams > 0 for streams in calls[1:-1])  # the last may race the close
    finally:
        watcher.stop()
