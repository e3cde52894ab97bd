"""``lifelong.client``: the kubectl-like client of the GM's HTTP API (``lifelong apply/get/...``).

It is a client of the Global Manager, not part of it, so it lives beside the ``lifelong``
dispatcher rather than in ``lifelong.cloud``; it imports only ``lifelong.common``. The
dispatcher (``cli/__main__.py``) registers its sub-commands from ``lifelong.client.commands``;
``lifelong demo`` and tests use its HTTP client and file reader.
"""

import importlib
import sys

# Optional packages that httpx and httpcore import when they are installed, which a synchronous
# client never uses: trio (httpcore's locks for async code under trio) and httpx's own command
# line (``httpx._main``: click, rich, pygments). Where they are installed (the test extra's
# selenium brings trio) they were ~85 ms of CPU at every client command (docs/performance.md).
# They are hidden while httpx and httpcore load, unless something has imported them already,
# and are importable as usual afterwards.
_NOT_NEEDED = ("trio", "httpx._main")


def _load_httpx() -> None:
    hidden = [name for name in _NOT_NEEDED if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    try:
        importlib.import_module("httpx")
        importlib.import_module("httpcore")  # httpx imports it with the first client
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


_load_httpx()
