"""Options of the bus client, as small frozen dataclasses: broker address, TLS, credentials, will,
reconnect policy. Pure, no I/O; validated on construction (``ConfigError``, exit code 2).

The library never reads environment variables: the GM and LC build these from their own
configuration and pass them to ``BusClient`` explicitly.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import tenacity
from tenacity.wait import wait_base

from lifelong.common.bus.names import check_topic_name
from lifelong.common.errors import ConfigError, TopicError

MQTT_PORT = 1883
MQTTS_PORT = 8883
_SCHEMES = {"mqtt": False, "mqtts": True}
_HOSTNAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_USERINFO = re.compile(r"(//)[^/@]*@")
_EXPECTED = "expected mqtt://host[:port] or mqtts://host[:port]"


def _redact(url: str) -> str:
    """The URL as it may appear in a message: any user:password@ part replaced."""
    return _USERINFO.sub(r"\1***@", url)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker listens. ``tls`` is True for ``mqtts://``."""

    host: str
    port: int = MQTT_PORT
    tls: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError("broker host must be a non-empty string")
        if ":" not in self.host and not _HOSTNAME.match(self.host):
            raise ConfigError(f"broker host {self.host!r} is not a valid host name or address")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigError(f"broker port {self.port!r} is not a number in 1-65535")

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """``mqtt://host:port`` or ``mqtts://host:port`` (port defaults to 1883 / 8883).

        IPv6 literals go in brackets (``mqtt://[::1]:1883``). Credentials, paths and queries
        are refused: credentials belong in ``Credentials``, never in a URL that gets logged.
        """
        if not isinstance(url, str) or not url.strip():
            raise ConfigError(f"broker address is empty; {_EXPECTED}")
        text = url.strip()
        shown = _redact(text)
        if "://" not in text:
            raise ConfigError(f"broker address {shown!r} has no scheme; {_EXPECTED}")
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"broker address {shown!r} is malformed ({exc}); {_EXPECTED}") from None
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ConfigError(f"broker address {shown!r} has scheme {parts.scheme!r}; {_EXPECTED}")
        if "@" in parts.netloc:
            raise ConfigError(
                f"broker address {shown!r} contains credentials; pass them as Credentials instead"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"broker address {shown!r} has a path or query; {_EXPECTED}")
        host = parts.hostname
        if not host:
            raise ConfigError(f"broker address {shown!r} has no host; {_EXPECTED}")
        tls = _SCHEMES[scheme]
        if port is None:
            port = MQTTS_PORT if tls else MQTT_PORT
        if port == 0:
            raise ConfigError(f"broker address {shown!r}: port 0 is not a number in 1-65535")
        return cls(host=host, port=port, tls=tls)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True, slots=True)
class Credentials:
    """User name and password for the broker. ``repr`` and ``str`` never show the password."""

    username: str
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.username, str) or not self.username:
            raise ConfigError("broker user name must be a non-empty string")

    def __repr__(self) -> str:
        shown = "None" if self.password is None else "'***'"
        return f"Credentials(username={self.username!r}, password={shown})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class TLSParameters:
    """TLS for ``mqtts://``. All paths are PEM files; None means the system default.

    ``ca_certs``: CA bundle that signed the broker's certificate (None: the system store).
    ``certfile``/``keyfile``: this client's certificate and key, for brokers that require
    client certificates (``require_certificate true`` in mosquitto).
    ``insecure``: skip the host name check (the chain is still verified against ``ca_certs``).
    Only for test set-ups with a certificate issued for another name; never in production.
    """

    ca_certs: str | os.PathLike[str] | None = None
    certfile: str | os.PathLike[str] | None = None
    keyfile: str | os.PathLike[str] | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.keyfile is not None and self.certfile is None:
            raise ConfigError("TLS keyfile given without certfile")


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for us when our connection dies without a DISCONNECT.

    Defaults fit presence: QoS 1 and retained, so that a node that is gone stays visibly
    ``offline`` to anyone who subscribes later.
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True

    def __post_init__(self) -> None:
        try:
            check_topic_name(self.topic)
        except TopicError as exc:
            raise ConfigError(f"will: {exc}") from None
        if not isinstance(self.payload, bytes | bytearray):
            raise ConfigError("will payload must be bytes")
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"will QoS {self.qos!r} is not 0, 1 or 2")


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How the client waits between connection attempts (all values in seconds).

    The n-th wait of an outage is ``min(initial * 2**(n-1) + uniform(0, jitter), maximum)``
    (tenacity's ``wait_exponential_jitter``). The client retries forever until ``close()``:
    an edge LC is a systemd service and must come back by itself after any outage.
    """

    initial: float = 0.5
    """First wait after a failed attempt. A restarted broker (systemd, a Kubernetes pod) is
    usually back within seconds, so the first retries come quickly; and since it is never
    zero, a broker that refuses at once cannot make the client spin."""

    maximum: float = 30.0
    """Cap on one wait. A week offline then costs one attempt per 30 s per node, which no
    broker notices, and a node is back at most half a minute after its broker is."""

    jitter: float = 1.0
    """Up to this much random time is added to each wait, so that hundreds of edge nodes that
    lost the same broker do not all reconnect in the same instant when it returns."""

    stable_after: float = 10.0
    """A connection that lasted at least this long resets the waits: the next outage starts
    with an immediate attempt. One that dropped sooner (the broker accepts and then kicks us:
    a duplicate client id, an ACL, overload) keeps the waits growing instead."""

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "jitter", "stable_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ConfigError(f"reconnect {name} must be a number of seconds, not {value!r}")
        if self.initial <= 0:
            raise ConfigError(f"reconnect initial wait must be > 0 s (got {self.initial}): no busy loop")
        if self.maximum < self.initial:
            raise ConfigError(
                f"reconnect maximum {self.maximum} s is below the initial wait {self.initial} s"
            )
        if self.jitter < 0 or self.stable_after < 0:
            raise ConfigError("reconnect jitter and stable_after must be >= 0 s")

    def wait(self) -> wait_base:
        """The tenacity wait strategy for this policy (a fresh object; it keeps no state)."""
        if "multiplier" in inspect.signature(tenacity.wait_exponential_jitter).parameters:
            # tenacity >= 9.1 deprecates `initial` (DeprecationWarning) in favour of `multiplier`.
            return tenacity.wait_exponential_jitter(
                multiplier=self.initial, max=self.maximum, jitter=self.jitter
            )
        return tenacity.wait_exponential_jitter(initial=self.initial, max=self.maximum, jitter=self.jitter)
