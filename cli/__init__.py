"""lifelong: edge-cloud lifelong learning in the style of KubeEdge Sedna, over MQTT.

The top-level package holds only the version and the ``lifelong`` command's dispatcher
(``lifelong.__main__``). The system lives in the sub-packages: ``lifelong.common`` (API,
protocol, bus client), ``lifelong.cloud`` (Global Manager), ``lifelong.edge`` (Local
Controller) and ``lifelong.broker`` (embedded amqtt broker).
"""

__version__ = "0.1.0"
