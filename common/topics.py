"""Topic names of bus protocol v1: building and parsing. Pure, no I/O.

    {p}/node/{node}/down/{kind}/{ns}/{name}   GM -> LC  desired state of one resource
    {p}/node/{node}/down/_ctl                  GM -> LC  acks, sync snapshots, worker log requests
    {p}/node/{node}/up/{kind}/{ns}/{name}     LC -> GM  status reports of one resource
    {p}/node/{node}/up/_ctl                    LC -> GM  hello, acks of downstream messages, log answers
    {p}/node/{node}/presence                   LC       retained online; the will sets offline
    {p}/gm/presence                            GM       retained online; the will sets offline

``{p}`` is the prefix, ``lifelong/v1`` by default; it may itself contain ``/``. A segment
(node, kind, namespace, name) must be non-empty and free of ``/``, ``+``, ``#`` and NUL;
a kind may not start with ``_`` (reserved for ``_ctl``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from lifelong.common.envelope import CONTROL_KIND
from lifelong.common.errors import TopicError

DEFAULT_PREFIX = "lifelong/v1"
GM_NAME = "gm"
"""The GM's name on the bus: its presence envelope's ``node``, and its default broker user
(``lifelong broker --gm-user``, ``deploy/mosquitto/acl``), whose ACL reaches every node's topics."""
OBSERVER_NAME = "observer"
"""The broker user that may read everything under the prefix and publish nothing (both ACLs):
for ``lifelong tail`` and ``mosquitto_sub``. Since a client's id is its user name, an operator
tailing with the GM's credentials would disconnect the GM; this user disconnects nobody."""
RESERVED_WHY = {
    GM_NAME: "it is the GM's name on the bus and its broker user, whose access covers every node's topics",
    OBSERVER_NAME: "it is the broker user that reads every node's topics (lifelong tail)",
}
RESERVED_NODE_NAMES = frozenset(RESERVED_WHY)
"""Names no edge node may have: an LC so named would connect as the GM's or the observer's
broker user."""
_FORBIDDEN = ("/", "+", "#", "\x00")
MAX_SEGMENT = 253


class Direction(StrEnum):
    DOWN = "down"
    UP = "up"


def check_segment(value: str, what: str) -> str:
    """Return ``value`` if it can be one topic segment, else raise ``TopicError``."""
    if not isinstance(value, str) or not value:
        raise TopicError(f"{what} must be a non-empty string")
    if len(value) > MAX_SEGMENT:
        raise TopicError(f"{what} is {len(value)} characters, over {MAX_SEGMENT}")
    for ch in _FORBIDDEN:
        if ch in value:
            shown = "NUL" if ch == "\x00" else repr(ch)
            raise TopicError(f"{what} {value!r} contains {shown}")
    return value


def check_prefix(prefix: str) -> str:
    if not prefix or prefix.startswith("/") or prefix.endswith("/"):
        raise TopicError(f"topic prefix {prefix!r} must be non-empty without a leading or trailing '/'")
    for part in prefix.split("/"):
        check_segment(part, "topic prefix segment")
    return prefix


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic. ``kind`` is ``_ctl`` for control topics; ``direction`` is None for presence."""

    prefix: str
    node: str | None  # None for the GM's presence
    direction: Direction | None
    kind: str | None = None
    ns: str | None = None
    name: str | None = None

    @property
    def is_presence(self) -> bool:
        return self.direction is None

    @property
    def is_control(self) -> bool:
        return self.kind == CONTROL_KIND


class Topics:
    """Builds and parses the topics under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = check_prefix(prefix)
        self._parts = len(prefix.split("/"))

    # -- building -------------------------------------------------------------------------
    def resource(self, node: str, direction: Direction | str, kind: str, ns: str, name: str) -> str:
        check_segment(node, "node")
        check_segment(kind, "kind")
        if kind.startswith("_"):
            raise TopicError(f"kind {kind!r} may not start with '_'")
        check_segment(ns, "namespace")
        check_segment(name, "name")
        return f"{self.prefix}/node/{node}/{Direction(direction).value}/{kind}/{ns}/{name}"

    def down(self, node: str, kind: str, ns: str, name: str) -> str:
        return self.resource(node, Direction.DOWN, kind, ns, name)

    def up(self, node: str, kind: str, ns: str, name: str) -> str:
        return self.resource(node, Direction.UP, kind, ns, name)

    def control(self, node: str, direction: Direction | str) -> str:
        check_segment(node, "node")
        return f"{self.prefix}/node/{node}/{Direction(direction).value}/{CONTROL_KIND}"

    def down_ctl(self, node: str) -> str:
        return self.control(node, Direction.DOWN)

    def up_ctl(self, node: str) -> str:
        return self.control(node, Direction.UP)

    def node_presence(self, node: str) -> str:
        check_segment(node, "node")
        return f"{self.prefix}/node/{node}/presence"

    def gm_presence(self) -> str:
        return f"{self.prefix}/gm/presence"

    # -- subscription filters ---------------------------------------------------------------
    def node_down_filter(self, node: str) -> str:
        """What an LC subscribes to: everything sent down to it."""
        check_segment(node, "node")
        return f"{self.prefix}/node/{node}/down/#"

    def all_up_filter(self) -> str:
        """What the GM subscribes to: every node's upstream messages."""
        return f"{self.prefix}/node/+/up/#"

    def all_presence_filter(self) -> str:
        return f"{self.prefix}/node/+/presence"

    def node_filter(self, node: str) -> str:
        """Everything under one node (its ACL scope)."""
        check_segment(node, "node")
        return f"{self.prefix}/node/{node}/#"

    # -- parsing ----------------------------------------------------------------------------
    def parse(self, topic: str) -> Topic:
        """Parse a concrete topic under this prefix; raises ``TopicError`` otherwise."""
        if not isinstance(topic, str):
            raise TopicError("topic must be a string")
        if not topic.startswith(self.prefix + "/"):
            raise TopicError(f"topic {topic!r} is not under prefix {self.prefix!r}")
        rest = topic[len(self.prefix) + 1 :].split("/")
        if rest == ["gm", "presence"]:
            return Topic(self.prefix, None, None)
        if len(rest) < 3 or rest[0] != "node":
            raise TopicError(f"topic {topic!r} is not a lifelong topic")
        node = _segment(rest[1], "node", topic)
        if len(rest) == 3 and rest[2] == "presence":
            return Topic(self.prefix, node, None)
        try:
            direction = Direction(rest[2])
        except ValueError:
            raise TopicError(f"topic {topic!r}: {rest[2]!r} is neither 'up' nor 'down'") from None
        if len(rest) == 4 and rest[3] == CONTROL_KIND:
            return Topic(self.prefix, node, direction, CONTROL_KIND)
        if len(rest) != 6:
            raise TopicError(f"topic {topic!r} needs kind/namespace/name after {direction.value!r}")
        kind = _segment(rest[3], "kind", topic)
        if kind.startswith("_"):
            raise TopicError(f"topic {topic!r}: kind {kind!r} may not start with '_'")
        return Topic(
            self.prefix,
            node,
            direction,
            kind,
            _segment(rest[4], "namespace", topic),
            _segment(rest[5], "name", topic),
        )


def _segment(value: str, what: str, topic: str) -> str:
    try:
        return check_segment(value, what)
    except TopicError as exc:
        raise TopicError(f"topic {topic!r}: {exc}") from None
