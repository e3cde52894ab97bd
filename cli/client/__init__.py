"""``lifelong.client``: the kubectl-like client of the GM's HTTP API (``lifelong apply/get/...``).

It is a client of the Global Manager, not part of it, so it lives beside the ``lifelong``
dispatcher rather than in ``lifelong.cloud``; it imports only ``lifelong.common``. The
dispatcher (``cli/__main__.py``) registers its sub-commands from ``lifelong.client.commands``;
``lifelong demo`` and tests use its HTTP client and file reader.
"""
