"""The edge Local Controller (LC): ``lifelong lc``, one per edge host, usually under systemd.

Layer rule: this package imports ``lifelong.common`` only, never ``lifelong.cloud``.
``service.LocalController`` wires the pieces; ``commands`` is the CLI entry point.
"""
