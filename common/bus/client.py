"""``BusClient``: one MQTT 3.1.1 connection to the broker, kept up until ``close()``.

Who calls it: the GM and every LC own one client each (built from their own configuration);
tests and benchmarks use it to drive real brokers. It wraps paho-mqtt 2.x, and every paho
return code, socket/TLS error and CONNACK refusal becomes a ``BusError`` subclass with the
code in ``rc`` ("no more return codes"). See the package docstring for the concurrency model.

Life cycle: ``start()`` returns at once; the network thread connects, re-subscribes, calls
``on_connect(first)`` and serves; on any failure it waits (``ReconnectPolicy``) and tries again,
forever. ``close()`` sends DISCONNECT (the broker drops the will) after an optional final
retained message; ``kill()`` drops the TCP connection without one (the broker publishes the
will), which is how a crash looks from the broker.

paho 2.x behaviour this module depends on (checked against paho-mqtt 2.2):

- Driving ``loop()`` from our own thread, paho would write to the socket from any thread that
  calls ``publish()`` (it does so whenever ``loop_start()`` was not used and no
  ``on_socket_register_write`` is set). We set a no-op one: writes stay on the network thread.
- ``on_publish`` runs while paho holds its outgoing-message lock, which ``publish()`` takes too;
  a lock of ours taken in the callback and held around ``publish()`` would deadlock. Callbacks
  therefore only record acks; ``_drain`` settles tickets after ``loop()`` returns.
- A QoS 1 ``publish()`` without a socket returns ``MQTT_ERR_NO_CONN`` yet keeps the message and
  sends it after the next CONNACK; a QoS 0 one is dropped.
- MQTT 3.1.1 CONNACK codes arrive as MQTT 5 reason codes (not authorised = 0x87, bad user name
  or password = 0x86); a lost connection is reported as "Unspecified error", so the message
  text comes from ``error_string()`` of ``loop()``'s return code instead.
- ``loop()`` without a socket returns at once (no sleep): looping on it would spin.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
import tenacity
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from lifelong.common.bus.names import check_topic_filter, check_topic_name, topic_matches
from lifelong.common.bus.options import BrokerAddress, Credentials, ReconnectPolicy, TLSParameters, Will
from lifelong.common.bus.ticket import BusStats, PublishTicket
from lifelong.common.codec import Codec, encode
from lifelong.common.envelope import Envelope
from lifelong.common.errors import (
    BusError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    NotConnected,
    PublishError,
    SubscribeError,
)

log = logging.getLogger("lifelong.common.bus")

MessageHandler = Callable[[str, bytes, bool], None]
"""``handler(topic, payload, retained)``; runs on the network thread and must not block."""
ConnectCallback = Callable[[bool], None]
"""``on_connect(first)``: the session is up and every subscription is re-established."""
DisconnectCallback = Callable[[BusError | None], None]
"""``on_disconnect(error)``: the session ended; ``error`` is None after ``close()``/``kill()``."""

DEFAULT_KEEPALIVE = 30
"""Seconds. A dead link (NAT timeout, unplugged edge) is noticed within 1.5x this, and the
broker publishes the will as late; 30 s keeps idle traffic to one PINGREQ per 30 s."""
DEFAULT_MAX_INFLIGHT = 20
"""QoS 1 messages sent but not yet acknowledged (paho's and mosquitto's default window)."""
DEFAULT_MAX_QUEUED = 1000
"""QoS 1 messages held by the client (in flight + waiting); beyond it ``publish`` raises
``PublishError``. Bounds memory: the LC's durable outbox, not this queue, absorbs outages."""
DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds for the TCP/TLS connect, and again for the CONNACK."""

_LOOP_TIMEOUT = 1.0  # seconds in select(); publish/close wake it earlier through paho's socketpair
_FAILURE = 0x80  # reason codes from here up are refusals (SUBACK 0x80 in MQTT 3.1.1)
_AUTH_REFUSALS = frozenset({0x86, 0x87})  # "Bad user name or password", "Not authorized"


class _Subscription(NamedTuple):
    handler: MessageHandler
    qos: int


@dataclasses.dataclass
class _SubAck:
    """A SUBSCRIBE sent by ``subscribe()``; ``codes`` stays None if the session ended first."""

    topic_filter: str
    event: threading.Event = dataclasses.field(default_factory=threading.Event)
    codes: list[int] | None = None


@dataclasses.dataclass
class _Resubscribe:
    """The SUBSCRIBE that renews every remembered filter after a CONNACK."""

    mid: int
    filters: list[str]


@dataclasses.dataclass
class _Counters:
    connect_attempts: int = 0
    connects: int = 0
    reconnects: int = 0
    published: int = 0
    acked: int = 0
    received: int = 0
    handler_errors: int = 0


class BusClient:
    """An MQTT client that stays connected: reconnects with backoff and re-subscribes by itself.

    All options are keyword-only. ``address`` may be a ``BrokerAddress`` or its URL. The
    session is clean (``clean_session=True``): the broker keeps nothing for us while we are
    away; subscriptions are renewed by the client on every connect, and what must not be lost
    is the application's job (the LC outbox, the GM's level-triggered sync).
    """

    def __init__(
        self,
        *,
        client_id: str,
        address: BrokerAddress | str,
        credentials: Credentials | None = None,
        tls: TLSParameters | None = None,
        will: Will | None = None,
        keepalive: int = DEFAULT_KEEPALIVE,
        reconnect: ReconnectPolicy = ReconnectPolicy(),  # noqa: B008 - frozen, so sharing is safe
        on_connect: ConnectCallback | None = None,
        on_disconnect: DisconnectCallback | None = None,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_queued: int = DEFAULT_MAX_QUEUED,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        if not isinstance(client_id, str) or not client_id or "\x00" in client_id:
            raise ConfigError("client_id must be a non-empty string")
        self.client_id = client_id
        self.address = address if isinstance(address, BrokerAddress) else BrokerAddress.parse(address)
        if tls is not None and not self.address.tls:
            raise ConfigError(f"TLS parameters given for {self.address}; use an mqtts:// address")
        if isinstance(keepalive, bool) or not isinstance(keepalive, int) or not 0 < keepalive < 65536:
            raise ConfigError(f"keepalive must be 1-65535 seconds, not {keepalive!r}")
        if max_inflight < 1 or max_queued < 0:
            raise ConfigError("max_inflight must be >= 1 and max_queued >= 0 (0: unbounded)")
        if connect_timeout <= 0:
            raise ConfigError("connect_timeout must be > 0 seconds")
        self._keepalive = keepalive
        self._reconnect = reconnect
        self._connect_timeout = float(connect_timeout)
        self._max_queued = max_queued
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._user_note = f" as user {credentials.username!r}" if credentials else ""

        # _state_lock: short sections, never held while calling paho.
        self._state_lock = threading.Lock()
        self._subs: dict[str, _Subscription] = {}
        self._connected = False
        self._ever_ready = False
        self._killed = False
        self._disconnect_sent = False
        self._close_deadline = 0.0
        self._last_error: BusError | None = None
        self._counters = _Counters()
        # _pub_lock: held across paho's publish()/subscribe() and the registration of the
        # ticket/waiter under the mid they return; the network thread takes it to settle them.
        self._pub_lock = threading.Lock()
        self._pending: dict[int, PublishTicket] = {}
        self._finished = False  # the network thread has settled everything and ended
        self._sub_waiters: dict[int, _SubAck] = {}
        # Filled by paho callbacks (network thread), processed by _drain (network thread).
        self._connacks: collections.deque[ReasonCode] = collections.deque()
        self._subacks: collections.deque[tuple[int, list[int]]] = collections.deque()
        self._acks: collections.deque[tuple[int, int]] = collections.deque()
        # Network thread only.
        self._connack: ReasonCode | None = None
        self._resub: _Resubscribe | None = None
        self._disconnect_reason = ""

        self._closing = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = self._make_client(credentials, tls, will, max_inflight, max_queued)

    def _make_client(
        self,
        credentials: Credentials | None,
        tls: TLSParameters | None,
        will: Will | None,
        max_inflight: int,
        max_queued: int,
    ) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,  # only loop_forever() reads it; reconnecting is ours
        )
        client.enable_logger(logging.getLogger("lifelong.common.bus.paho"))
        client.connect_timeout = self._connect_timeout
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(max_queued)
        if credentials is not None:
            client.username_pw_set(credentials.username, credentials.password)
        if will is not None:
            client.will_set(will.topic, bytes(will.payload), will.qos, will.retain)
        if self.address.tls:
            params = tls or TLSParameters()
            try:
                client.tls_set(
                    ca_certs=_path(params.ca_certs),
                    certfile=_path(params.certfile),
                    keyfile=_path(params.keyfile),
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
                if params.insecure:
                    client.tls_insecure_set(True)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"TLS set-up for {self.address} failed: {exc}") from exc
        client.on_connect = self._paho_on_connect
        client.on_disconnect = self._paho_on_disconnect
        client.on_publish = self._paho_on_publish
        client.on_subscribe = self._paho_on_subscribe
        client.on_message = self._paho_on_message
        # With no paho thread and no register-write callback, paho writes to the socket from
        # whichever thread calls publish() - racing our network thread. Registering one makes
        # publish() only queue the packet and wake select() through paho's socketpair.
        client.on_socket_register_write = _ignore_socket
        client.on_socket_open = _no_delay
        return client

    # -- public API -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        state = "connected" if self._connected else ("closed" if self._closing.is_set() else "disconnected")
        return f"<BusClient {self.client_id!r} {self.address} {state}>"

    def __enter__(self) -> BusClient:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """The broker accepted our CONNECT and the connection has not been seen to drop."""
        return self._connected

    @property
    def last_error(self) -> BusError | None:
        """Why the last connection attempt failed or the last session ended; None once
        connected again."""
        return self._last_error

    @property
    def stats(self) -> BusStats:
        with self._state_lock:
            return BusStats(**dataclasses.asdict(self._counters))

    def start(self) -> None:
        """Start the network thread, which connects in the background. Returns at once."""
        with self._state_lock:
            if self._thread is not None or self._closing.is_set():
                raise BusError(f"bus client {self.client_id!r} was already started or closed")
            self._thread = threading.Thread(target=self._run, name=f"bus-{self.client_id}", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until connected with all subscriptions in place (True) or ``timeout`` (False).

        After False, ``last_error`` says why (e.g. a refused password).
        """
        return self._ready.wait(timeout)

    def subscribe(
        self, topic_filter: str, handler: MessageHandler, qos: int = 1, *, timeout: float = 10.0
    ) -> None:
        """Deliver messages matching ``topic_filter`` to ``handler(topic, payload, retained)``.

        The subscription is remembered and renewed on every reconnect; one handler per
        filter (subscribing again replaces it). When connected, waits up to ``timeout``
        seconds for the SUBACK and raises ``SubscribeError`` if the broker refused (0x80, e.g.
        an ACL; the filter is then forgotten) or did not answer. When not connected, or when
        called on the network thread (from a handler), returns at once; a refusal is logged.
        """
        check_topic_filter(topic_filter)
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, not {qos!r}")
        entry = _Subscription(handler, qos)
        with self._state_lock:
            if self._closing.is_set():
                raise NotConnected(f"bus client {self.client_id!r} is closed")
            self._subs[topic_filter] = entry
            send_now = self._connected
        if not send_now:
            return
        with self._pub_lock:
            rc, mid = self._client.subscribe(topic_filter, qos)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None or not self._connected:
                return  # the session is ending (its waiters were woken); renewed on reconnect
            waiter = _SubAck(topic_filter)
            self._sub_waiters[mid] = waiter
        if self._on_network_thread():
            return
        try:
            if not waiter.event.wait(timeout):
                raise SubscribeError(
                    f"no SUBACK for {topic_filter!r} from {self.address} within {timeout}s "
                    "(it stays registered and is renewed on reconnect)"
                )
        finally:
            with self._pub_lock:
                self._sub_waiters.pop(mid, None)
        if waiter.codes and waiter.codes[0] >= _FAILURE:
            with self._state_lock:
                if self._subs.get(topic_filter) is entry:
                    del self._subs[topic_filter]
            raise SubscribeError(
                f"broker {self.address} refused subscription to {topic_filter!r} "
                f"(SUBACK 0x{waiter.codes[0]:02x}); check its ACL for client {self.client_id!r}",
                rc=waiter.codes[0],
            )

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> PublishTicket:
        """Queue a message for the broker; the ticket settles when the broker confirms it.

        Thread-safe, never blocks on the network. Raises ``NotConnected`` when there is no
        session (nothing is queued then), ``PublishError`` when the client's queue is full
        (``max_queued``) or the payload is too large, ``TopicError`` for a bad topic. A QoS 1
        message accepted just as the connection drops stays queued inside the client and is
        sent after the reconnect; its ticket settles then.
        """
        check_topic_name(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, not {qos!r}")
        if not self._connected:
            raise NotConnected(f"not connected to {self.address}; cannot publish to {topic!r}")
        with self._pub_lock:
            if self._finished:
                raise NotConnected(f"bus client {self.client_id!r} is closed")
            try:
                info = self._client.publish(topic, payload, qos=qos, retain=retain)
            except (ValueError, TypeError) as exc:
                raise PublishError(f"cannot publish to {topic!r}: {exc}") from exc
            rc = info.rc
            queued = rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
                rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
            )
            if queued:
                ticket = PublishTicket(info.mid, topic, qos, network_thread=self._thread)
                self._pending[info.mid] = ticket
        if not queued:
            if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                raise NotConnected(f"not connected to {self.address}; cannot publish to {topic!r}", rc=rc)
            if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                raise PublishError(
                    f"cannot publish to {topic!r}: {self._max_queued} messages already wait for "
                    f"{self.address} to confirm them (max_queued)",
                    rc=rc,
                )
            raise PublishError(f"cannot publish to {topic!r}: {mqtt.error_string(rc)}", rc=rc)
        with self._state_lock:
            self._counters.published += 1
        return ticket

    def publish_envelope(
        self,
        topic: str,
        env: Envelope,
        codec: Codec | str = Codec.MSGPACK,
        *,
        qos: int = 1,
        retain: bool = False,
        max_payload: int | None = None,
    ) -> PublishTicket:
        """Encode ``env`` (``PayloadTooLarge`` if over ``max_payload``) and ``publish`` it."""
        return self.publish(topic, encode(env, codec, max_payload=max_payload), qos=qos, retain=retain)

    def close(self, timeout: float = 5.0, *, final: tuple[str, bytes] | None = None) -> None:
        """Disconnect cleanly (the broker discards the will) and stop the network thread.

        ``final=(topic, payload)`` is published retained with QoS 1 first and waited for, e.g.
        presence ``offline``. Unconfirmed tickets settle with ``NotConnected``. Idempotent;
        waits at most ``timeout`` seconds in all.
        """
        deadline = time.monotonic() + timeout
        if self._closing.is_set():
            self._join(deadline)
            return
        if final is not None and not self._connected:
            log.info("bus %s: not connected; final message to %r not sent", self.client_id, final[0])
        elif final is not None:
            try:
                ticket = self.publish(final[0], final[1], qos=1, retain=True)
                if not self._on_network_thread():
                    ticket.wait(max(0.0, deadline - time.monotonic()))
            except BusError as exc:
                log.warning(
                    "bus %s: final message to %r not confirmed before close: %s",
                    self.client_id,
                    final[0],
                    exc,
                )
        with self._state_lock:
            self._close_deadline = deadline
            self._closing.set()
            started = self._thread is not None
        if not started:
            self._finish()
            return
        if self._connected:
            self._request_disconnect()
        self._join(deadline)

    def kill(self, timeout: float = 5.0) -> None:
        """Drop the TCP connection without DISCONNECT, as a crash would, and stop.

        The broker sees an unclean loss and publishes the will. For tests and for processes
        that must look dead to their peers at once.
        """
        with self._state_lock:
            self._killed = True
            self._close_deadline = time.monotonic() + timeout
            self._closing.set()
            started = self._thread is not None
        if not started:
            self._finish()
            return
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            # The plain-socket shutdown (also for TLS sockets): FIN to the broker, EOF to our
            # select(); the network thread then closes the socket itself.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        self._join(time.monotonic() + timeout)

    # -- paho callbacks (network thread, inside paho's loop) ------------------------------------
    def _paho_on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connacks.append(reason)

    def _paho_on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._state_lock:
            self._connected = False
        self._ready.clear()
        self._disconnect_reason = str(reason)

    def _paho_on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Properties
    ) -> None:
        self._acks.append((mid, reason.value))

    def _paho_on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._subacks.append((mid, [r.value for r in reasons]))

    def _paho_on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            log.warning("bus %s: dropped a message whose topic is not UTF-8", self.client_id)
            return
        payload, retained = bytes(message.payload), bool(message.retain)
        with self._state_lock:
            self._counters.received += 1
            matching = [sub.handler for f, sub in self._subs.items() if topic_matches(f, topic)]
        for handler in matching:
            try:
                handler(topic, payload, retained)
            except Exception:
                self._handler_failed(f"handler {handler!r} for {topic!r}")

    # -- the network thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._closing.is_set():
                retrying = tenacity.Retrying(
                    wait=self._reconnect.wait(),
                    retry=tenacity.retry_if_exception_type(BusError),
                    stop=self._stop_when_closing,
                    sleep=self._sleep,
                    before_sleep=self._log_retry,
                )
                try:
                    retrying(self._session)
                except tenacity.RetryError:
                    break  # close() stopped the retries
        except Exception:  # a bug; logged rather than lost with the thread
            log.exception("bus %s: network thread failed", self.client_id)
        finally:
            self._finish()

    def _stop_when_closing(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._closing.is_set()

    def _sleep(self, seconds: float) -> None:
        self._closing.wait(seconds)  # close() and kill() cut the wait short

    def _log_retry(self, retry_state: tenacity.RetryCallState) -> None:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        delay = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        if isinstance(exc, BusError):
            self._last_error = exc
        if isinstance(exc, ConnectionLost):  # already logged when the session ended
            log.info("bus %s: next attempt in %.1fs", self.client_id, delay)
            return
        # A long outage at the capped wait would log a line every `maximum` seconds: after the
        # first few attempts, only every 20th is logged at WARNING/ERROR, the rest at DEBUG.
        n = retry_state.attempt_number
        if n > 3 and n % 20:
            level = logging.DEBUG
        elif isinstance(exc, ConnectError) and exc.rc in _AUTH_REFUSALS:
            level = logging.ERROR  # misconfigured credentials: retried, but loudly
        else:
            level = logging.WARNING
        log.log(level, "bus %s: %s; attempt %d, next in %.1fs", self.client_id, exc, n, delay)

    def _session(self) -> None:
        """Connect, serve until the connection ends. Raises ``BusError`` to be retried."""
        if self._closing.is_set():
            return
        try:
            if not self._connect():
                return
            started = time.monotonic()
            error = self._serve()
        except BusError:
            raise
        except Exception as exc:
            log.exception("bus %s: unexpected error; dropping the connection", self.client_id)
            self._drop_socket()
            if self._connected:
                self._end_session(ConnectionLost(f"unexpected error: {exc!r}"))
            raise ConnectionLost(f"unexpected error in the bus client: {exc!r}") from exc
        if error is not None and time.monotonic() - started < self._reconnect.stable_after:
            raise error  # a short-lived session: keep the waits growing
        # Stable session lost (or closed): the outer loop starts afresh, first attempt at once.

    def _connect(self) -> bool:
        """One attempt: socket, CONNECT, wait for CONNACK. False if closing interrupted it."""
        with self._state_lock:
            self._counters.connect_attempts += 1
        self._connacks.clear()
        self._subacks.clear()
        self._connack = None
        try:
            rc = self._client.connect(self.address.host, self.address.port, keepalive=self._keepalive)
        except OSError as exc:  # refused, unreachable, DNS, timeout, TLS handshake (SSLError)
            raise ConnectError(f"cannot connect to {self.address}: {exc}") from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._drop_socket()
            raise ConnectError(f"cannot connect to {self.address}: {mqtt.error_string(rc)}", rc=rc)
        deadline = time.monotonic() + self._connect_timeout
        while True:
            rc = self._client.loop(timeout=max(0.0, min(_LOOP_TIMEOUT, deadline - time.monotonic())))
            self._drain()
            reason = self._connack
            if reason is not None:
                if reason.is_failure:
                    self._drop_socket()
                    raise ConnectError(
                        f"broker {self.address} refused client {self.client_id!r}{self._user_note}: {reason}",
                        rc=reason.value,
                    )
                return True
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._client.socket() is None:
                self._drop_socket()
                raise ConnectError(
                    f"connection to {self.address} closed before CONNACK: {mqtt.error_string(rc)}", rc=rc
                )
            if self._closing.is_set():
                self._drop_socket()
                return False
            if time.monotonic() >= deadline:
                self._drop_socket()
                raise ConnectError(f"no CONNACK from {self.address} within {self._connect_timeout:g}s")

    def _serve(self) -> ConnectionLost | None:
        """Run paho's loop until the session ends; None if we ended it (close/kill)."""
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        give_up: float | None = None  # when closing: drop the socket if DISCONNECT is stuck
        while True:
            if self._closing.is_set():
                if self._killed or (give_up is not None and time.monotonic() >= give_up):
                    self._drop_socket()
                    break
                if give_up is None:
                    self._request_disconnect()
                    # Even if close() used up its timeout waiting for the final message, give
                    # the DISCONNECT a moment: without it the broker would publish the will.
                    give_up = max(self._close_deadline, time.monotonic() + 2 * _LOOP_TIMEOUT)
            rc = self._client.loop(timeout=_LOOP_TIMEOUT)
            self._drain()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._client.socket() is None:
                self._drop_socket()
                break
        error = None
        if not self._closing.is_set():
            why = mqtt.error_string(rc) if rc else (self._disconnect_reason or "socket closed")
            error = ConnectionLost(f"lost connection to {self.address}: {why}", rc=int(rc) or None)
        self._end_session(error)
        return error

    def _drain(self) -> None:
        """Act on what paho's callbacks recorded, outside paho's locks."""
        while self._connacks:
            self._handle_connack(self._connacks.popleft())
        while self._subacks:
            mid, codes = self._subacks.popleft()
            self._handle_suback(mid, codes)
        if not self._acks:
            return
        settled: list[tuple[PublishTicket, int]] = []
        with self._pub_lock:
            while self._acks:
                mid, code = self._acks.popleft()
                ticket = self._pending.pop(mid, None)
                if ticket is not None:
                    settled.append((ticket, code))
        for ticket, code in settled:
            if code >= _FAILURE:  # MQTT 5 only; a 3.1.1 broker cannot refuse a publish
                ticket.settle(PublishError(f"broker refused message to {ticket.topic!r}", rc=code))
                continue
            with self._state_lock:
                self._counters.acked += 1
            ticket.settle(None)

    def _handle_connack(self, reason: ReasonCode) -> None:
        self._connack = reason
        if reason.is_failure:
            return
        with self._state_lock:
            self._connected = True
            self._disconnect_sent = False
            first = self._counters.connects == 0
            self._counters.connects += 1
            if not first:
                self._counters.reconnects += 1
            subs = [(f, s.qos) for f, s in self._subs.items()]
        self._disconnect_reason = ""
        log.info(
            "bus %s: connected to %s%s%s",
            self.client_id,
            self.address,
            self._user_note,
            "" if first else " (reconnect)",
        )
        if subs:
            rc, mid = self._client.subscribe(subs)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                self._resub = _Resubscribe(mid, [f for f, _ in subs])
            return  # else the connection is already gone; the serve loop sees it
        self._become_ready(None)

    def _handle_suback(self, mid: int, codes: list[int]) -> None:
        resub = self._resub
        if resub is not None and mid == resub.mid:
            self._resub = None
            refused = [f for f, c in zip(resub.filters, codes, strict=False) if c >= _FAILURE]
            error = None
            if refused:
                error = SubscribeError(
                    f"broker {self.address} refused to renew subscriptions {refused} "
                    f"for client {self.client_id!r}; check its ACL",
                    rc=_FAILURE,
                )
                log.error("bus %s: %s", self.client_id, error)
            self._become_ready(error)
            return
        with self._pub_lock:
            waiter = self._sub_waiters.pop(mid, None)
        if waiter is None:
            return
        waiter.codes = codes
        waiter.event.set()
        if codes and codes[0] >= _FAILURE:
            log.error(
                "bus %s: broker %s refused subscription to %r (SUBACK 0x%02x)",
                self.client_id,
                self.address,
                waiter.topic_filter,
                codes[0],
            )

    def _become_ready(self, error: SubscribeError | None) -> None:
        """The session is usable: every remembered filter was renewed (or refused: ``error``)."""
        with self._state_lock:
            if not self._connected:
                return  # lost again before the SUBACK was processed
            first = not self._ever_ready
            self._ever_ready = True
        self._last_error = error
        self._ready.set()
        if self._on_connect is not None:
            try:
                self._on_connect(first)
            except Exception:
                self._handler_failed("on_connect callback")

    def _end_session(self, error: ConnectionLost | None) -> None:
        with self._state_lock:
            self._connected = False
            killed = self._killed
        self._ready.clear()
        self._resub = None
        with self._pub_lock:
            waiters = list(self._sub_waiters.values())
            self._sub_waiters.clear()
        for waiter in waiters:
            waiter.event.set()
        if error is not None:
            self._last_error = error
            log.warning("bus %s: %s", self.client_id, error)
        else:
            how = "dropped without DISCONNECT (kill)" if killed else "disconnected"
            log.info("bus %s: %s from %s", self.client_id, how, self.address)
        if self._on_disconnect is not None:
            try:
                self._on_disconnect(error)
            except Exception:
                self._handler_failed("on_disconnect callback")

    def _request_disconnect(self) -> None:
        """Queue one DISCONNECT (not after kill); paho closes the socket once it is written."""
        with self._state_lock:
            if self._killed or self._disconnect_sent:
                return
            self._disconnect_sent = True
        self._client.disconnect()

    def _drop_socket(self) -> None:
        """Close the connection without DISCONNECT, through public paho API only."""
        for _ in range(10):
            sock = self._client.socket()
            if sock is None:
                return
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
            self._client.loop(timeout=0.0)  # paho reads EOF and closes the socket itself
            self._drain_acks_only()

    def _drain_acks_only(self) -> None:
        self._connacks.clear()
        self._subacks.clear()
        self._drain()

    def _finish(self) -> None:
        """The network thread ends: nothing pending may wait forever."""
        self._drop_socket()
        with self._state_lock:
            self._connected = False
        self._ready.clear()
        self._drain_acks_only()
        with self._pub_lock:
            self._finished = True
            pending = list(self._pending.values())
            self._pending.clear()
            waiters = list(self._sub_waiters.values())
            self._sub_waiters.clear()
        for waiter in waiters:
            waiter.event.set()
        for ticket in pending:
            ticket.settle(
                NotConnected(
                    f"bus client {self.client_id!r} closed before {self.address} confirmed "
                    f"message mid={ticket.mid} to {ticket.topic!r}"
                )
            )

    def _join(self, deadline: float) -> None:
        thread = self._thread
        if thread is None or self._on_network_thread():
            return
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("bus %s: network thread still running after close timeout", self.client_id)

    def _on_network_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def _handler_failed(self, what: str) -> None:
        with self._state_lock:
            self._counters.handler_errors += 1
        log.exception("bus %s: %s raised", self.client_id, what)


def _ignore_socket(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho's on_socket_register_write; our loop() polls want_write() itself."""


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho's on_socket_open: switch Nagle off (paho leaves it on).

    With Nagle, a message published right after a PUBACK (the LC's ``ack`` after storing an
    upsert, the GM's ``ack`` after applying a report) waits for the broker's delayed TCP ACK
    of that PUBACK: about 40 ms per hop on Linux (docs/performance.md).
    """
    with contextlib.suppress(OSError, AttributeError):  # not a TCP socket: nothing to switch off
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.fspath(value)
