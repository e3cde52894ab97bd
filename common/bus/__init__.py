"""The MQTT bus client shared by the GM and the LC (paho-mqtt 2.x underneath).

    options.py  BrokerAddress, Credentials, TLSParameters, Will, ReconnectPolicy (pure)
    names.py    topic name / filter rules and matching (pure)
    ticket.py   PublishTicket, BusStats
    client.py   BusClient: the connection, its network thread, reconnects, subscriptions

Concurrency model
-----------------
Processes are thread-based. Each ``BusClient`` owns one network thread (``bus-<client id>``)
that drives paho by calling ``Client.loop()`` itself - never ``loop_start()`` or
``loop_forever()`` - so connecting and reconnecting are ours: after a failed attempt, or
after losing a session that lasted less than ``ReconnectPolicy.stable_after``, the thread
waits according to tenacity's ``wait_exponential_jitter`` (``initial`` doubling up to
``maximum``, plus up to ``jitter``) and tries again, forever, until ``close()``. The wait is
an ``Event.wait`` that ``close()`` interrupts, and it is never zero, so the client cannot
busy-loop against a dead or refusing broker. All paho callbacks run on the network thread,
and the client calls the application's message handlers, ``on_connect``/``on_disconnect``
and ticket done-callbacks on it too: they must not block (the GM and the LC hand the work to
their own worker threads) and must never wait on a ``PublishTicket``. ``publish`` and
``subscribe`` are thread-safe and callable from any thread, handlers included; they never
touch the socket: paho queues the packet and wakes the network thread, which does all
socket I/O. Acknowledgements (CONNACK, SUBACK, PUBACK) are only recorded inside paho's
callbacks and acted on right after each ``loop()`` iteration, outside paho's locks, under
the same client lock that ``publish`` holds from paho's ``publish()`` until the ticket is
registered under its message id - so a PUBACK that beats ``publish()`` back to its caller
still finds its ticket.
"""

from lifelong.common.bus.client import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_QUEUED,
    BusClient,
    ConnectCallback,
    DisconnectCallback,
    MessageHandler,
)
from lifelong.common.bus.names import check_topic_filter, check_topic_name, topic_matches
from lifelong.common.bus.options import BrokerAddress, Credentials, ReconnectPolicy, TLSParameters, Will
from lifelong.common.bus.ticket import BusStats, PublishTicket

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_KEEPALIVE",
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_MAX_QUEUED",
    "BrokerAddress",
    "BusClient",
    "BusStats",
    "ConnectCallback",
    "Credentials",
    "DisconnectCallback",
    "MessageHandler",
    "PublishTicket",
    "ReconnectPolicy",
    "TLSParameters",
    "Will",
    "check_topic_filter",
    "check_topic_name",
    "topic_matches",
]
