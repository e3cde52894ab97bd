"""The exception tree of lifelong. Every error a user or an operator can cause is one of these.

    LifelongError                 base; ``exit_code`` is what the CLI exits with
    ├── ValidationError           a resource (YAML/JSON) is malformed; ``path`` names the field
    ├── ConfigError               a setting is unusable (also a ``ValueError``), e.g. a broker URL
    ├── ProtocolError             a bus message is unacceptable (counted, never applied)
    │   ├── DecodeError           the bytes are not a valid msgpack/JSON envelope
    │   ├── PayloadTooLarge       over the configured payload limit
    │   ├── UnsupportedVersion    the envelope's protocol version is not ours
    │   ├── TopicError            a topic or topic segment is malformed
    │   ├── InvalidBody           a body (or the object of an upsert) its model refuses
    │   └── IdentityError         an envelope speaks for another node than its topic's
    ├── BusError                  talking to the MQTT broker failed
    │   ├── ConnectError          could not connect (socket error or CONNACK refusal; ``rc``)
    │   ├── ConnectionLost        an established connection dropped (socket, keepalive, broker)
    │   ├── NotConnected          an operation needs a connection that is not up
    │   ├── PublishError          the broker refused or the client could not queue (``rc``)
    │   ├── PublishTimeout        the broker did not confirm a QoS 1 publish in time
    │   └── SubscribeError        the broker refused a subscription (SUBACK 0x80) or never answered
    └── StateError                an event is not allowed in the job's current state

Every ``ProtocolError`` carries a short machine-readable ``reason`` used as a metric label.
Messages never contain credentials.
"""

from __future__ import annotations


class LifelongError(Exception):
    """Base of all lifelong errors."""

    exit_code: int = 1


class ValidationError(LifelongError):
    """A resource failed validation. ``errors`` is a list of (field path, message)."""

    exit_code = 2

    def __init__(self, errors: list[tuple[str, str]], *, source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        lines = [f"{path}: {msg}" if path else msg for path, msg in errors]
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(lines))

    @property
    def path(self) -> str:
        return self.errors[0][0] if self.errors else ""


class ConfigError(LifelongError, ValueError):
    """A setting (URL, policy, option) cannot be used. Raised before any I/O happens."""

    exit_code = 2


class ProtocolError(LifelongError):
    """A bus message that must not be applied."""

    reason: str = "invalid"


class DecodeError(ProtocolError):
    reason = "decode"


class PayloadTooLarge(ProtocolError):
    reason = "too_large"


class UnsupportedVersion(ProtocolError):
    reason = "version"


class TopicError(ProtocolError):
    reason = "topic"


class IdentityError(ProtocolError):
    reason = "identity"


class InvalidBody(ProtocolError):
    """A message body that its model (``lifelong.common.messages``) refuses. ``errors`` is a list
    of (field path, message); ``what`` names the body (``sync body``, ``upsert body``...)."""

    reason = "invalid"

    def __init__(self, what: str, errors: list[tuple[str, str]]) -> None:
        self.what = what
        self.errors = errors
        detail = "; ".join(f"{path}: {msg}" if path else msg for path, msg in errors)
        super().__init__(f"{what}: {detail}")

    @property
    def path(self) -> str:
        return self.errors[0][0] if self.errors else ""


class BusError(LifelongError):
    """Talking to the broker failed."""

    def __init__(self, message: str, *, rc: int | None = None) -> None:
        super().__init__(message)
        self.rc = rc


class ConnectError(BusError):
    pass


class ConnectionLost(BusError):
    pass


class NotConnected(BusError):
    pass


class PublishError(BusError):
    pass


class PublishTimeout(BusError):
    pass


class SubscribeError(BusError):
    pass


class StateError(LifelongError):
    """An event that the state machine does not allow from the current condition."""
