"""The embedded MQTT broker: amqtt 0.12 with lifelong's authentication and topic ACL.

``run(settings)`` serves in the foreground until SIGTERM or SIGINT, then shuts down and returns 0;
SIGHUP re-reads the password file. ``serve(settings, stop)`` is the same as a coroutine, for
callers that run their own event loop (``lifelong demo``).

``LifelongBroker`` works around these amqtt 0.12 defects (by overriding private methods, hence
the ``amqtt<0.13`` pin and the check in ``_check_amqtt``):

* On every CONNECT amqtt sends the new client every retained message that matches *any*
  client's subscription filter, with no ACL check, even if the new client subscribed to nothing
  (broker.py ``_handle_client_session``). A node would receive the retained presence of every
  other node. Here retained messages go only to a client that just subscribed with a matching
  filter (as MQTT 3.1.1 §3.3.1.3 says, and as mosquitto does), each checked for RECEIVE access.
* Keep-alive is never enforced: when a client stays silent past its keep-alive, amqtt's
  ``BrokerProtocolHandler.handle_read_timeout`` does nothing, so a client whose host lost power
  or whose link was cut (no TCP FIN) stays "connected" forever and its will (the node's
  ``offline`` presence) is never sent. Here the connection is closed after 1.5 x the client's
  keep-alive without a packet ([MQTT-3.1.2-24], as mosquitto does), and the will goes out.
* A client is authenticated only after amqtt has already acted on its client id: a clean-session
  CONNECT deletes the subscriptions of the session with that id (even of a connected client, and
  even when the password then turns out wrong), and a persistent-session CONNECT takes over that
  session's object. So anyone could silence any client whose id they knew. Here the CONNECT is
  authenticated first; a refused client gets a throw-away id that touches no one; and, when a
  password file is in force, an accepted client's id is replaced by its user name
  (``use_username_as_clientid``, as ``deploy/mosquitto/mosquitto.conf`` sets for mosquitto),
  so a client can only ever take over its own user's session. The older connection of that id
  is then closed (its will is not sent: the same client is back), as mosquitto closes it.
* A bracketed IPv6 bind address keeps its brackets and cannot be resolved.
* ``Broker.shutdown()`` cancels each connection's reader task and waits for it, but on
  Python 3.11 ``asyncio.wait_for`` can swallow that cancellation, and the reader
  then waits for the client's next packet: shutdown hangs while clients stay connected. So
  ``LifelongBroker.stop()`` first stops accepting, closes every client connection (wills are
  not sent: the broker going away is not the client dying) and waits for the connections to
  end, and only then calls ``shutdown()``.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError, PluginError, PluginLoadError
from amqtt.errors import BrokerError as AmqttBrokerError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session
from amqtt.utils import gen_client_id

from lifelong.broker.acl import DEFAULT_GM_USER, AclPolicy, TopicAclPlugin, WillAclPlugin
from lifelong.broker.auth import PasswordFileAuthPlugin, load_password_file
from lifelong.common.errors import LifelongError, TopicError
from lifelong.common.topics import DEFAULT_PREFIX

log = logging.getLogger("lifelong.broker")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883
SHUTDOWN_TIMEOUT = 10.0

_AUTH_PLUGIN = f"{PasswordFileAuthPlugin.__module__}.{PasswordFileAuthPlugin.__qualname__}"
_TOPIC_PLUGIN = f"{TopicAclPlugin.__module__}.{TopicAclPlugin.__qualname__}"
_WILL_PLUGIN = f"{WillAclPlugin.__module__}.{WillAclPlugin.__qualname__}"


class BrokerError(LifelongError):
    """The broker cannot start: bad settings, or the address cannot be bound."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    password_file: str | None = None
    acl: bool = False
    prefix: str = DEFAULT_PREFIX
    gm_user: str = DEFAULT_GM_USER
    allow_anonymous: bool = False
    """Listen on a non-loopback address without a password file and the ACL (warned at start)."""

    @property
    def secured(self) -> bool:
        """Password file and ACL both in force: only known users, each confined to its topics."""
        return self.password_file is not None and self.acl

    def validate(self) -> None:
        """Raise ``BrokerError`` with a clear message for bad settings (nothing is started)."""
        if not 0 <= self.port <= 65535:
            raise BrokerError(f"port {self.port} is not between 0 and 65535")
        if not self.secured and not self.allow_anonymous and not is_loopback(self.host):
            raise BrokerError(
                f"refusing to listen on {self.host} without --password-file and --acl: anyone who "
                "can reach it could command every edge node (docs/security.md); give both, listen "
                "on 127.0.0.1, or pass --allow-anonymous"
            )
        if self.acl:
            try:
                AclPolicy(self.prefix, self.gm_user)
            except TopicError as exc:
                raise BrokerError(str(exc)) from None
        if self.password_file is not None:
            try:
                load_password_file(self.password_file)
            except LifelongError as exc:
                raise BrokerError(str(exc)) from None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback address literals; any other name counts as reachable."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_address(host: str, port: int) -> str:
    """``host:port`` as amqtt's listener ``bind`` wants it (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def broker_config(settings: BrokerSettings) -> dict[str, Any]:
    """The amqtt ``BrokerConfig`` mapping for these settings."""
    plugins: dict[str, Any] = {_AUTH_PLUGIN: {"password_file": settings.password_file}}
    if settings.acl:
        acl = {"prefix": settings.prefix, "gm_user": settings.gm_user}
        plugins[_WILL_PLUGIN] = dict(acl)
        plugins[_TOPIC_PLUGIN] = dict(acl)
    return {
        "listeners": {"default": {"type": "tcp", "bind": bind_address(settings.host, settings.port)}},
        # Keep-alive is enforced by LifelongBroker itself, at 1.5 x the client's keep-alive.
        "timeout_disconnect_delay": 0,
        # Only our plugins: no $SYS plugin, no packet logger (it would log CONNECT passwords).
        "plugins": plugins,
    }


# Set while amqtt handles a SUBSCRIBE packet, so that retained messages are sent only then.
_IN_SUBSCRIBE: contextvars.ContextVar[bool] = contextvars.ContextVar("lifelong_in_subscribe", default=False)
# The client id given to a refused client: no real client has it, so it touches no session.
_REFUSED_ID = "$refused-"
# What a CONNECT renews in a persistent session it resumes (amqtt's list, plus will_retain).
_RENEWED = (
    "will_flag",
    "will_message",
    "will_topic",
    "will_qos",
    "will_retain",
    "keep_alive",
    "username",
    "password",
)


class LifelongBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's Broker with the defects listed in the module docstring worked around.

    ``bind_identity``: replace each authenticated client's id by its user name (and refuse a
    client without one), as mosquitto's ``use_username_as_clientid``. ``serve`` sets it when a
    password file is in force.
    """

    def __init__(self, config: dict[str, Any], *, bind_identity: bool = False) -> None:
        super().__init__(config)
        self.bind_identity = bind_identity
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        # Session -> the result of authenticating its CONNECT, which happens before amqtt looks
        # at the client id; amqtt's own later call to _authenticate reads it from here.
        self._verdicts: dict[int, bool] = {}
        BrokerProtocolHandler.handle_read_timeout = _close_silent_client

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        """amqtt's, with the CONNECT authenticated (and the client id bound) before any session
        is looked up, deleted or taken over by its client id."""
        peer = f"{remote_address}:{remote_port}"
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except AMQTTError as exc:
            self.logger.warning(f"[MQTT-3.1.0-1] {peer}: Can't read first packet as CONNECT: {exc}")
            raise AMQTTError(exc) from exc
        except MQTTError as exc:
            self.logger.warning(f"Invalid connection from {peer}")
            await writer.close()
            raise MQTTError(exc) from exc
        except NoDataError as exc:
            self.logger.error(f"No data from {peer} : {exc}")  # toned down by _AmqttNoise
            raise AMQTTError(exc) from exc

        # Keep-alive: the connection's reader times out after 1.5 x the client's keep-alive.
        if session.keep_alive > 0:
            session.keep_alive += (session.keep_alive + 1) // 2
        accepted = bool(await super()._authenticate(session, None))
        if accepted and self.bind_identity:
            if not session.username:
                log.info("refused client %r: no user name", session.client_id)
                accepted = False
            elif session.client_id != session.username:
                log.debug("client id %r replaced by its user name %r", session.client_id, session.username)
                session.client_id = session.username
        if not accepted:
            session.client_id = f"{_REFUSED_ID}{uuid.uuid4().hex}"
            session.clean_session = True
        self._verdicts[id(session)] = accepted

        if not session.client_id:
            session.client_id = gen_client_id()
        elif accepted and session.client_id in self._sessions:
            old, old_handler = self._sessions[session.client_id]
            if session.clean_session:
                _close_connection(old, old_handler, "a new connection with the same client id")
                await self._delete_session(session.client_id)
            else:
                # amqtt's persistent session: kept, with the new connection's will and keep-alive
                # (amqtt's take-over in _handle_client_session closes an older connection).
                for name in _RENEWED:
                    setattr(old, name, getattr(session, name))
                old.parent = 1
                return handler, old
        session.parent = 0
        return handler, session

    async def _authenticate(self, session: Session, listener: Any) -> bool:
        # amqtt calls this from _handle_client_session; the verdict was reached in
        # _initialize_client_session, before the client id was used for anything.
        verdict = self._verdicts.pop(id(session), None)
        if verdict is None:
            return bool(await super()._authenticate(session, listener))
        return verdict

    async def _handle_client_session(self, reader: Any, writer: Any, session: Session, *args: Any) -> None:
        try:
            await super()._handle_client_session(reader, writer, session, *args)
        finally:
            if session.client_id and session.client_id.startswith(_REFUSED_ID):
                self._sessions.pop(session.client_id, None)  # amqtt keeps refused sessions forever

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
        try:
            await super().stream_connected(reader, writer, listener_name)
        finally:
            if task is not None:
                self._connections.pop(task, None)

    async def stop(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop accepting, close every client connection, then run amqtt's shutdown."""
        for server in self._servers.values():
            if isinstance(server.instance, asyncio.AbstractServer):
                server.instance.close()
        for session, _handler in list(self._sessions.values()):
            session.will_flag = False
        for writer in list(self._connections.values()):
            writer.close()  # flushes what is buffered, then FIN
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)
        for writer in list(self._connections.values()):
            writer.transport.abort()  # a peer that does not read (gone, or stuck) is cut off
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=timeout / 2)
        await asyncio.wait_for(self.shutdown(), timeout / 2)

    async def _handle_subscription(
        self, client_session: Session, handler: Any, subscribe_waiter: Any
    ) -> None:
        token = _IN_SUBSCRIBE.set(True)
        try:
            await super()._handle_subscription(client_session, handler, subscribe_waiter)
        finally:
            _IN_SUBSCRIBE.reset(token)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        if not _IN_SUBSCRIBE.get():
            return  # amqtt's on-CONNECT replay over every client's filters: never
        topic_filter, qos = subscription
        if not any(s.client_id == session.client_id for s, _ in self._subscriptions.get(topic_filter, ())):
            return  # the filter was refused
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = []
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                continue
            out_qos = min(qos, retained.qos if retained.qos is not None else qos)
            publish = handler.mqtt_publish(topic, retained.data, out_qos, retain=True)
            tasks.append(asyncio.ensure_future(publish))
        if tasks:
            await asyncio.wait(tasks)

    @classmethod
    def _split_bindaddr_port(cls, port_str: str, default_port: int) -> tuple[str | None, int]:
        address, port = super()._split_bindaddr_port(port_str, default_port)
        if address and address.startswith("[") and address.endswith("]"):
            address = address[1:-1]
        return address, port

    def bound_ports(self) -> list[int]:
        ports: list[int] = []
        for server in self._servers.values():
            for sock in getattr(server.instance, "sockets", None) or ():
                ports.append(sock.getsockname()[1])
        return ports


def _close_connection(session: Session, handler: BrokerProtocolHandler | None, why: str) -> None:
    """Close a client's connection at once, without its will (it is the same client, back)."""
    session.will_flag = False
    writer = getattr(getattr(handler, "writer", None), "_writer", None)
    if isinstance(writer, asyncio.StreamWriter) and not writer.is_closing():
        log.info("client %r: closing its older connection (%s)", session.client_id, why)
        writer.transport.abort()


def _close_silent_client(handler: BrokerProtocolHandler) -> None:
    """Replaces amqtt's no-op: the client sent nothing for 1.5 x its keep-alive, so close it.

    The reader then sees end-of-stream and amqtt handles an abnormal disconnect: it sends the will.
    """
    writer = getattr(handler.writer, "_writer", None)
    if isinstance(writer, asyncio.StreamWriter) and not writer.is_closing():
        client_id = handler.session.client_id if handler.session is not None else None
        log.info("client %r sent nothing for 1.5 x its keep-alive: closing its connection", client_id)
        writer.transport.abort()


def _check_amqtt() -> None:
    for name in (
        "_handle_subscription",
        "_publish_retained_messages_for_subscription",
        "_split_bindaddr_port",
        "_topic_filtering",
        "_matches",
        "_get_handler",
        "_authenticate",
        "_initialize_client_session",
        "_handle_client_session",
        "_delete_session",
        "stream_connected",
        "shutdown",
    ):
        if not callable(getattr(Broker, name, None)):
            raise BrokerError(f"amqtt.broker.Broker has no {name}: this amqtt version is not supported")
    if not callable(getattr(BrokerProtocolHandler, "handle_read_timeout", None)):
        raise BrokerError("amqtt's BrokerProtocolHandler has no handle_read_timeout: unsupported amqtt")


class _AmqttNoise(logging.Filter):
    """Tones down amqtt's broker log.

    * "Broker startup failed" comes with a traceback; ``serve`` reports the error in one line.
    * A connection closed before its CONNECT (a port probe, a load balancer's health check) is
      logged at ERROR plus WARNING; it is routine, so it becomes DEBUG.
    """

    _ROUTINE = ("No data from ", "Failed to initialize client session: No data")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message == "Broker startup failed":
            return False
        if message.startswith(self._ROUTINE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_amqtt_logging() -> None:
    """amqtt logs every connection at INFO; keep it to warnings unless we debug."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
    broker_log = logging.getLogger("amqtt.broker")
    if not any(isinstance(f, _AmqttNoise) for f in broker_log.filters):
        broker_log.addFilter(_AmqttNoise())


async def serve(
    settings: BrokerSettings,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[LifelongBroker], None] | None = None,
) -> None:
    """Run the broker until ``stop`` is set. Raises ``BrokerError`` if it cannot start."""
    settings.validate()
    _check_amqtt()
    quiet_amqtt_logging()
    if not settings.secured and not is_loopback(settings.host):
        log.warning(
            "listening on %s without %s (--allow-anonymous): anyone who can reach this port can "
            "command every edge node (docs/security.md)",
            settings.host,
            " and ".join(
                n for n, v in (("--password-file", settings.password_file), ("--acl", settings.acl)) if not v
            ),
        )
    elif settings.acl and settings.password_file is None:
        log.warning(
            "--acl without --password-file: user names are taken on trust, "
            "so any client can claim to be any node"
        )
    try:
        broker = LifelongBroker(broker_config(settings), bind_identity=settings.password_file is not None)
    except (PluginError, PluginLoadError, ValueError) as exc:
        cause = exc.__cause__ or exc
        raise BrokerError(f"invalid broker configuration: {cause}") from None
    try:
        await broker.start()
    except AmqttBrokerError as exc:
        cause = exc.__cause__ or exc
        detail = getattr(cause, "strerror", None) or str(cause)
        where = bind_address(settings.host, settings.port)
        raise BrokerError(f"cannot listen on {where}: {detail}") from None
    ports = broker.bound_ports()
    port = ports[0] if ports else settings.port
    log.info("broker listening on %s", bind_address(settings.host, port))
    log.debug(
        "broker auth: %s; acl: %s",
        "password file" if settings.password_file else "open (no password file)",
        f"prefix {settings.prefix!r}, GM user {settings.gm_user!r}" if settings.acl else "off",
    )
    if on_ready is not None:
        on_ready(broker)
    try:
        await stop.wait()
    finally:
        log.info("broker stopping")
        try:
            await broker.stop(SHUTDOWN_TIMEOUT)
        except TimeoutError:
            log.warning("broker did not shut down within %.0f s", SHUTDOWN_TIMEOUT)
        log.info("broker stopped")


def reload_password_file(broker: Broker) -> None:
    for plugin in broker.plugins_manager.plugins:
        if isinstance(plugin, PasswordFileAuthPlugin):
            plugin.reload()


def run(settings: BrokerSettings) -> int:
    """Serve in the foreground until SIGTERM or SIGINT; 0 on a clean stop."""
    quiet_amqtt_logging()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        holder: list[LifelongBroker] = []

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def on_hup() -> None:
            if holder:
                reload_password_file(holder[0])

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            await serve(settings, stop, on_ready=holder.append)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
    return 0
