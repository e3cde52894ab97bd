"""lifelong: edge-cloud lifelong learning in the style of KubeEdge Sedna, over MQTT.

The top-level package (folder ``cli/``) holds the version, the ``lifelong`` command's
dispatcher (``lifelong.__main__``) and the operator tools that are clients of the system:
``lifelong.client`` (the kubectl-like client of the GM's API), ``lifelong.tail`` and
``lifelong.demo``. The system lives in the sub-packages: ``lifelong.common`` (API, protocol,
bus client), ``lifelong.cloud`` (Global Manager), ``lifelong.edge`` (Local Controller) and
``lifelong.broker`` (embedded amqtt broker). docs/design.md describes the layers.
"""

__version__ = "0.1.0"
