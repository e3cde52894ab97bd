"""The reference: raw paho-mqtt doing the same work on the same broker (QoS 1)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.infra import HOST, BenchTimeout

LOST = [0]
"""Messages the last ``throughput`` run never received (0 normally)."""


class _Sub:
    def __init__(self, port: int, topic: str, expect: int) -> None:
        self.expect = expect
        self.count = 0
        self.times: list[float] = []
        self.done = threading.Event()
        self.got = threading.Event()
        self._ready = threading.Event()
        # A persistent session: if the broker drops the link under load, paho reconnects and
        # the broker resumes the QoS 1 queue instead of losing it.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"raw-sub-{os.getpid()}-{time.time_ns()}",
            clean_session=False,
        )
        self.disconnects = 0
        self.client.on_disconnect = lambda *a: self._lost()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, 1)
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(HOST, port)
        self.client.loop_start()
        if not self._ready.wait(15):
            raise BenchTimeout("raw subscriber could not subscribe")

    def _lost(self) -> None:
        self.disconnects += 1

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.count += 1
        self.times.append(time.monotonic())
        self.got.set()
        if self.count >= self.expect:
            self.done.set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _pub(port: int, inflight: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-pub-{os.getpid()}-{time.time_ns()}")
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect(HOST, port)
    client.loop_start()
    if not connected.wait(15):
        raise BenchTimeout("raw publisher could not connect")
    return client


def throughput(
    port: int, n: int, size: int, *, inflight: int = 200, window: int = 2000, timeout: float = 300
) -> float:
    """QoS 1 publish -> receive of ``n`` messages of ``size`` bytes: messages per second."""
    LOST[0] = 0
    topic = f"bench/raw/{time.time_ns()}"
    sub = _Sub(port, topic, n)
    pub = _pub(port, inflight)
    payload = os.urandom(size)
    try:
        t0 = time.monotonic()
        for i in range(n):
            # A window, as the LC's outbox has: without one, paho and the broker drop part of a
            # 100,000-message burst (seen with mosquitto 2.0.11), which no reference should do.
            while i - sub.count > window:
                sub.got.clear()
                sub.got.wait(0.05)
            pub.publish(topic, payload, qos=1)
        if not sub.done.wait(timeout):
            if sub.count < n // 2:
                raise BenchTimeout(
                    f"raw throughput: {sub.count}/{n} received ({sub.disconnects} disconnects)"
                )
            # Report the rate of what did arrive, and say so (the caller records ``lost``).
            LOST[0] = n - sub.count
        return sub.count / (sub.times[-1] - t0)
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.close()


def latency(port: int, m: int, size: int) -> list[float]:
    """QoS 1 publish -> receive, one message at a time: seconds each."""
    topic = f"bench/rawlat/{time.time_ns()}"
    sub = _Sub(port, topic, m)
    pub = _pub(port, 20)
    payload = os.urandom(size)
    out: list[float] = []
    try:
        for _ in range(m):
            sub.got.clear()
            t0 = time.monotonic()
            pub.publish(topic, payload, qos=1)
            if not sub.got.wait(10):
                raise BenchTimeout("raw latency: a message was not received")
            out.append(sub.times[-1] - t0)
        return out
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.close()
