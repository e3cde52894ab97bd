"""The pure parts of the bus client (``lifelong.common.bus``), without a broker.

Address parsing, the option dataclasses, the reconnect waits (by inspecting the tenacity wait
object, not by sleeping), topic rules and the publish ticket. Everything that needs a network
is in ``tests/integration/test_bus.py`` against real brokers.
"""

from __future__ import annotations

import threading

import pytest
import tenacity

from lifelong.common import bus
from lifelong.common.bus import (
    BrokerAddress,
    BusClient,
    Credentials,
    PublishTicket,
    ReconnectPolicy,
    TLSParameters,
    Will,
    check_topic_filter,
    check_topic_name,
    topic_matches,
)
from lifelong.common.errors import (
    ConfigError,
    LifelongError,
    NotConnected,
    PublishTimeout,
    TopicError,
)


def test_public_names() -> None:
    assert set(bus.__all__) == {
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
    }
    for name in bus.__all__:
        assert hasattr(bus, name), name


# -- BrokerAddress ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://127.0.0.1:1883", "127.0.0.1", 1883, False),
        ("mqtt://broker.example.com:11883", "broker.example.com", 11883, False),
        ("mqtt://broker", "broker", 1883, False),
        ("mqtts://broker", "broker", 8883, True),
        ("mqtts://broker:443/", "broker", 443, True),
        ("MQTT://Broker.Local:1", "broker.local", 1, False),
        ("  mqtt://h:2  ", "h", 2, False),
        ("mqtt://[::1]:1883", "::1", 1883, False),
        ("mqtt://mosquitto.lifelong-system.svc", "mosquitto.lifelong-system.svc", 1883, False),
    ],
)
def test_broker_address_parses(url: str, host: str, port: int, tls: bool) -> None:
    addr = BrokerAddress.parse(url)
    assert (addr.host, addr.port, addr.tls) == (host, port, tls)
    assert BrokerAddress.parse(addr.url) == addr  # the canonical URL parses back
    assert str(addr) == addr.url


def test_broker_address_url_brackets_ipv6() -> None:
    assert BrokerAddress("::1", 1883).url == "mqtt://[::1]:1883"
    assert BrokerAddress("h", 8883, tls=True).url == "mqtts://h:8883"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("localhost:1883", "no scheme"),
        ("broker", "no scheme"),
        ("http://broker:80", "scheme 'http'"),
        ("tcp://broker:1883", "scheme 'tcp'"),
        ("mqtt://", "no host"),
        ("mqtt://:1883", "no host"),
        ("mqtt://broker:notaport", "malformed"),
        ("mqtt://broker:70000", "malformed"),
        ("mqtt://broker:0", "port 0"),
        ("mqtt://broker/some/path", "path or query"),
        ("mqtt://broker:1883?x=1", "path or query"),
        ("mqtt://broker:1883#frag", "path or query"),
        ("mqtt://[::1:1883", "malformed"),
        ("mqtt://bro ker:1883", "not a valid host"),
    ],
)
def test_broker_address_rejects_garbage(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        BrokerAddress.parse(url)
    assert says in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, LifelongError)
    assert info.value.exit_code == 2


def test_broker_address_rejects_credentials_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as info:
        BrokerAddress.parse("mqtt://node-a:s3cret-pw@broker:1883")
    assert "s3cret-pw" not in str(info.value)
    assert "Credentials" in str(info.value)


@pytest.mark.parametrize("port", [0, -1, 65536, True])
def test_broker_address_validates_port(port: int) -> None:
    with pytest.raises(ConfigError):
        BrokerAddress("h", port)


# -- Credentials, Will, TLS -------------------------------------------------------------------------
def test_credentials_repr_hides_the_password() -> None:
    creds = Credentials("node-a", "s3cret-pw")
    for text in (repr(creds), str(creds), f"{creds}", f"{creds!r}", repr([creds])):
        assert "s3cret-pw" not in text
        assert "node-a" in text
    assert creds.password == "s3cret-pw"  # still usable
    assert "password=None" in repr(Credentials("anonymous-ish"))


def test_credentials_need_a_user_name() -> None:
    with pytest.raises(ConfigError):
        Credentials("", "pw")


def test_will_defaults_fit_presence() -> None:
    will = Will("lifelong/v1/node/a/presence", b"offline")
    assert (will.qos, will.retain) == (1, True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"topic": "a/+/presence", "payload": b"x"},
        {"topic": "", "payload": b"x"},
        {"topic": "a/b", "payload": "text"},
        {"topic": "a/b", "payload": b"x", "qos": 3},
    ],
)
def test_will_is_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Will(**kwargs)  # type: ignore[arg-type]


def test_tls_parameters_given_for_plain_address_is_an_error() -> None:
    with pytest.raises(ConfigError, match="mqtts://"):
        BusClient(client_id="c", address="mqtt://h:1883", tls=TLSParameters())
    with pytest.raises(ConfigError):
        TLSParameters(keyfile="/k.pem")


# -- ReconnectPolicy --------------------------------------------------------------------------------
def _waits(policy: ReconnectPolicy, attempts: int) -> list[float]:
    """What the policy's tenacity wait object returns after attempt 1..attempts."""
    wait = policy.wait()
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    out = []
    for n in range(1, attempts + 1):
        state.attempt_number = n
        out.append(wait(state))
    return out


def test_reconnect_waits_grow_exponentially_and_are_capped() -> None:
    policy = ReconnectPolicy(initial=0.5, maximum=30.0, jitter=1.0)
    for _ in range(50):  # jitter is random: check the bounds on many draws
        waits = _waits(policy, 12)
        for n, w in enumerate(waits, start=1):
            base = 0.5 * 2 ** (n - 1)
            assert min(base, 30.0) <= w <= min(base + 1.0, 30.0), (n, w)
        assert waits[-1] == 30.0  # 0.5 * 2**11 is far over the cap
        assert all(w >= policy.initial for w in waits)  # never a busy loop


def test_reconnect_waits_without_jitter_are_exact() -> None:
    waits = _waits(ReconnectPolicy(initial=0.25, maximum=2.0, jitter=0.0), 6)
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_reconnect_jitter_spreads_clients() -> None:
    draws = {round(_waits(ReconnectPolicy(), 1)[0], 6) for _ in range(20)}
    assert len(draws) > 1  # not every node reconnects at the same instant


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.0},
        {"initial": -1.0},
        {"initial": 5.0, "maximum": 1.0},
        {"jitter": -0.1},
        {"stable_after": -1.0},
        {"initial": float("nan")},
        {"maximum": "30"},
    ],
)
def test_reconnect_policy_is_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ReconnectPolicy(**kwargs)  # type: ignore[arg-type]


# -- topics -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("topic", ["a/+/b", "a/#", "#", "", "a\x00b"])
def test_topic_names_refuse_wildcards_and_garbage(topic: str) -> None:
    with pytest.raises(TopicError):
        check_topic_name(topic)


@pytest.mark.parametrize("good", ["a/b", "#", "+", "a/+/c", "a/#", "+/+/#", "/a", "a//b"])
def test_topic_filters_accept(good: str) -> None:
    assert check_topic_filter(good) == good


@pytest.mark.parametrize("bad", ["a/#/b", "a/b#", "a+/b", "a/+b", "", "a\x00"])
def test_topic_filters_refuse(bad: str) -> None:
    with pytest.raises(TopicError):
        check_topic_filter(bad)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+/c", "a/b/c", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/#", "b/a", False),
        ("#", "a/b", True),
        ("#", "$SYS/broker", False),
        ("+/broker", "$SYS/broker", False),
        ("$SYS/#", "$SYS/broker", True),
        ("p/node/+/up/#", "p/node/n1/up/_ctl", True),
        ("p/node/+/up/#", "p/node/n1/down/_ctl", False),
        ("a/+", "a/", True),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


# -- BusClient without a broker ----------------------------------------------------------------------
def test_publish_when_not_connected_raises_not_connected() -> None:
    client = BusClient(client_id="unit", address="mqtt://127.0.0.1:1")
    assert not client.connected
    with pytest.raises(NotConnected):
        client.publish("a/b", b"x")
    client.close()
    with pytest.raises(NotConnected):
        client.publish("a/b", b"x")
    with pytest.raises(NotConnected):
        client.subscribe("a/#", lambda t, p, r: None)


def test_publish_checks_the_topic_first() -> None:
    client = BusClient(client_id="unit", address="mqtt://127.0.0.1:1")
    with pytest.raises(TopicError):
        client.publish("a/+", b"x")


def test_subscribe_before_start_is_remembered_without_io() -> None:
    client = BusClient(client_id="unit", address="mqtt://127.0.0.1:1")
    client.subscribe("a/#", lambda t, p, r: None)  # nothing to wait for: not connected
    assert client.wait_connected(0) is False
    assert client.stats.connect_attempts == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"client_id": ""}, {"keepalive": 0}, {"max_inflight": 0}, {"connect_timeout": 0}, {"address": "x"}],
)
def test_client_options_are_validated(kwargs: dict[str, object]) -> None:
    options: dict[str, object] = {"client_id": "c", "address": "mqtt://h:1883", **kwargs}
    with pytest.raises(ConfigError):
        BusClient(**options)  # type: ignore[arg-type]


# -- PublishTicket ----------------------------------------------------------------------------------
def test_ticket_wait_times_out() -> None:
    ticket = PublishTicket(7, "a/b", 1)
    with pytest.raises(PublishTimeout, match="mid=7"):
        ticket.wait(0.01)
    assert not ticket.done


def test_ticket_callbacks_run_once_when_settled_and_at_once_after() -> None:
    ticket = PublishTicket(1, "a/b", 1)
    seen: list[tuple[str, bool]] = []
    ticket.add_done_callback(lambda t: seen.append(("early", t.done)))
    ticket.settle()
    ticket.settle()  # idempotent
    ticket.add_done_callback(lambda t: seen.append(("late", t.done)))
    assert seen == [("early", True), ("late", True)]
    ticket.wait(0)


def test_ticket_settled_with_error_raises_it() -> None:
    ticket = PublishTicket(1, "a/b", 1)
    ticket.settle(NotConnected("closed"))
    assert not ticket.done and ticket.settled
    with pytest.raises(NotConnected):
        ticket.wait(0)


def test_ticket_wait_on_network_thread_is_refused() -> None:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            PublishTicket(1, "a/b", 1, network_thread=threading.current_thread()).wait(1)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)


def test_failing_done_callback_does_not_stop_others() -> None:
    ticket = PublishTicket(1, "a/b", 1)
    seen: list[int] = []

    def boom(t: PublishTicket) -> None:
        raise RuntimeError("boom")

    ticket.add_done_callback(boom)
    ticket.add_done_callback(lambda t: seen.append(t.mid))
    ticket.settle()
    assert seen == [1]
