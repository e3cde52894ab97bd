"""MQTT topic names and topic filters: the rules of MQTT 3.1.1 section 4.7, checked before I/O.

Pure. ``BusClient.publish`` and ``BusClient.subscribe`` call these so that a malformed topic is
a ``TopicError`` raised in the caller's thread, never a paho ``ValueError`` or a broker that
silently drops the connection.
"""

from __future__ import annotations

from lifelong.common.errors import TopicError

MAX_TOPIC_BYTES = 65535
"""A topic is a UTF-8 string with a 16-bit length prefix on the wire."""


def _check_common(value: str, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise TopicError(f"{what} must be a non-empty string")
    if "\x00" in value:
        raise TopicError(f"{what} {value!r} contains NUL")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise TopicError(f"{what} {value!r} is not valid UTF-8") from None
    if len(encoded) > MAX_TOPIC_BYTES:
        raise TopicError(f"{what} is {len(encoded)} bytes, over {MAX_TOPIC_BYTES}")
    return encoded


def check_topic_name(topic: str) -> str:
    """Return ``topic`` if messages can be published to it (no wildcards), else raise ``TopicError``."""
    _check_common(topic, "topic")
    if "+" in topic or "#" in topic:
        raise TopicError(f"topic {topic!r} contains a wildcard; wildcards are for subscriptions only")
    return topic


def check_topic_filter(topic_filter: str) -> str:
    """Return ``topic_filter`` if it is a valid subscription filter, else raise ``TopicError``.

    ``+`` must fill a whole level; ``#`` must fill the last level.
    """
    _check_common(topic_filter, "topic filter")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise TopicError(f"topic filter {topic_filter!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise TopicError(f"topic filter {topic_filter!r}: '+' must be a whole level")
    return topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a message on ``topic`` is delivered to a subscription to ``topic_filter``.

    ``+`` matches one level, ``#`` any number of levels including none (``a/#`` matches ``a``);
    filters that start with a wildcard do not match topics starting with ``$`` (``$SYS``).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    want = topic_filter.split("/")
    have = topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)
