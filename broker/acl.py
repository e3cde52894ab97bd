"""Topic access control for the embedded broker: each node only under its own ``node/{node}/``,
and only the GM commands a node.

The policy (docs/design.md, "Guarantees", 5. Identity; docs/security.md), for topic prefix ``P``
(``lifelong/v1`` by default):

    node user u   publish    P/node/u/up and below, and P/node/u/presence
                  subscribe  filters inside P/node/u/down/# (wildcards only below
                             P/node/u/down/), and P/gm/presence
                  receive    P/node/u/down and below, and P/gm/presence
    GM user       publish, subscribe, receive anything inside P/#
    observer      subscribe, receive anything inside P/#; publish nothing (``lifelong tail``,
                  ``mosquitto_sub``: an operator who reads the bus without being the GM)
    no user name  nothing

A node's credentials therefore cannot write its own down topics: only the GM can make an LC
run a worker. A node must not be named like the GM user (``gm`` by default) or the observer
(``observer``).

``deploy/mosquitto/acl`` ships the same policy for mosquitto 2.x; the integration tests run one
set of expectations against both brokers. Differences that remain, on purpose or forced:

* mosquitto's ``acl_file`` never refuses a SUBSCRIBE (security_default.c: "FIXME - implement
  ACL subscription strings"); it grants the filter and then delivers nothing the user may not
  read. Here a filter reaching outside the user's scope is refused (SUBACK 0x80), so a
  misconfigured LC learns it at once. What is *delivered* is the same on both.
* A denied PUBLISH is dropped and PUBACKed on both; mosquitto 2.0 then also closes the
  connection (eclipse-mosquitto/mosquitto#2579), amqtt keeps it.
* Like mosquitto, a user name or client id containing ``+`` or ``#`` gets nothing (it could
  otherwise widen a pattern). A user name that is not a valid topic segment (``/``, NUL, empty)
  gets nothing here either; mosquitto would accept ``/``, so never create such users.
* The will: mosquitto checks its topic for write access when it is about to send it and drops
  it silently if denied. amqtt 0.12 does not check wills at all, so ``WillAclPlugin`` checks the
  will topic at CONNECT and discards a will the user may not publish (the connection itself is
  accepted, as on mosquitto).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from lifelong.common.errors import TopicError
from lifelong.common.topics import DEFAULT_PREFIX, OBSERVER_NAME, check_prefix, check_segment

log = logging.getLogger("lifelong.broker.acl")

DEFAULT_GM_USER = "gm"


def _within(topic_or_filter: str, base: str) -> bool:
    """True if the topic (or filter) is ``base`` itself or lies below it.

    A filter passes only if all its wildcards are below ``base``: ``P/node/+/up/#`` is not within
    ``P/node/a`` because its second level is ``+``, not ``a``.
    """
    return topic_or_filter == base or topic_or_filter.startswith(base + "/")


@dataclass(frozen=True, slots=True)
class AclPolicy:
    """Pure decision logic, no I/O: who may publish, subscribe to and receive what."""

    prefix: str = DEFAULT_PREFIX
    gm_user: str = DEFAULT_GM_USER
    observer_user: str = OBSERVER_NAME

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        check_segment(self.gm_user, "GM user name")

    @property
    def gm_presence(self) -> str:
        return f"{self.prefix}/gm/presence"

    def node_base(self, user: str) -> str:
        return f"{self.prefix}/node/{user}"

    def node_writes(self, user: str, topic: str) -> bool:
        """True if node user ``user`` may publish on ``topic``: its up topics and its presence."""
        base = self.node_base(user)
        return _within(topic, f"{base}/up") or topic == f"{base}/presence"

    def node_reads(self, user: str, topic: str) -> bool:
        """True if node user ``user`` may subscribe to (or receive) ``topic``: its down topics
        and the GM's presence."""
        return _within(topic, f"{self.node_base(user)}/down") or topic == self.gm_presence

    @staticmethod
    def _identity_ok(user: str, client_id: str | None) -> bool:
        try:
            check_segment(user, "user name")
        except TopicError:
            return False
        return not (client_id and ("+" in client_id or "#" in client_id))

    def allowed(self, action: Action | str, user: str | None, client_id: str | None, topic: str) -> bool:
        """Decide one action. ``topic`` is a topic name, or a filter for ``subscribe``."""
        if not topic or not user or not self._identity_ok(user, client_id):
            return False
        if user == self.gm_user:
            return _within(topic, self.prefix)
        if user == self.observer_user:
            return Action(action) != Action.PUBLISH and _within(topic, self.prefix)
        if Action(action) == Action.PUBLISH:
            return self.node_writes(user, topic)
        return self.node_reads(user, topic)


def _policy_from(config: object) -> AclPolicy:
    return AclPolicy(
        prefix=getattr(config, "prefix", DEFAULT_PREFIX),
        gm_user=getattr(config, "gm_user", DEFAULT_GM_USER),
    )


class TopicAclPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt topic plugin enforcing ``AclPolicy`` for publish, subscribe and receive.

    amqtt 0.12 consults it: on PUBLISH (denied: the message is dropped silently, a QoS 1 publish
    is still PUBACKed and the connection stays up; mosquitto 2.0 PUBACKs too but then closes
    the connection, eclipse-mosquitto/mosquitto#2579); on SUBSCRIBE, per filter (denied: SUBACK 0x80 for
    that filter); on RECEIVE, per subscriber and message (denied: not sent). Denials are logged
    as warnings, rate-limited per user and action.
    """

    @dataclass
    class Config:
        prefix: str = DEFAULT_PREFIX
        gm_user: str = DEFAULT_GM_USER

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.policy = _policy_from(self.config)
        self.denials: Counter[tuple[str, str]] = Counter()

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        if session is None or topic is None or action is None:
            return False
        if self.policy.allowed(action, session.username, session.client_id, topic):
            return True
        self._log_denial(session, action, topic)
        return False

    def _log_denial(self, session: Session, action: Action, topic: str) -> None:
        key = (str(session.username), str(action))
        self.denials[key] += 1
        n = self.denials[key]
        # A misbehaving client may retry in a loop: warn on the 1st, 2nd, 4th, 8th ... denial.
        level = logging.WARNING if n & (n - 1) == 0 else logging.DEBUG
        log.log(
            level,
            "ACL denied %s on %r to client %r (user %r); %d denial(s) of this kind",
            action,
            topic,
            session.client_id,
            session.username,
            n,
        )


class WillAclPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Discards a will whose topic the user may not publish to (amqtt 0.12 never checks wills).

    It takes no part in the authentication decision (returns None, which amqtt ignores).
    """

    @dataclass
    class Config:
        prefix: str = DEFAULT_PREFIX
        gm_user: str = DEFAULT_GM_USER

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.policy = _policy_from(self.config)

    async def authenticate(self, *, session: Session) -> bool | None:
        if (
            session.will_flag
            and session.will_topic is not None
            and not self.policy.allowed(
                Action.PUBLISH, session.username, session.client_id, session.will_topic
            )
        ):
            log.warning(
                "client %r (user %r) set a will on %r, which it may not publish to; will discarded",
                session.client_id,
                session.username,
                session.will_topic,
            )
            session.will_flag = False
            session.will_retain = False
            session.will_topic = None
            session.will_message = None
        return None
