"""The embedded MQTT broker (amqtt 0.12) with lifelong's authentication and topic ACL.

``lifelong broker`` runs it (``lifelong.broker.commands``); ``lifelong.broker.server`` holds the
launcher, ``lifelong.broker.auth`` verifies mosquitto password files and ``lifelong.broker.acl``
confines every node to its own ``{prefix}/node/{node}/`` topics. ``deploy/mosquitto/`` ships the
same rules for mosquitto 2.x. This package imports ``lifelong.common`` only.
"""

from lifelong.broker.server import BrokerError, BrokerSettings, run, serve

__all__ = ["BrokerError", "BrokerSettings", "run", "serve"]
