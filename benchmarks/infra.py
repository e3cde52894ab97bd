"""Processes the benchmarks run: brokers, the GM, LCs, and a spy on the bus.

Everything is on loopback with free ports and bounded waits. Kept independent of
``tests/harness`` (which is a test-only package) but built the same way.
"""

from __future__ import annotations

import compileall
import contextlib
import functools
import importlib.util
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HOST = "127.0.0.1"
PREFIX = "lifelong/v1"
T = TypeVar("T")


class BenchTimeout(RuntimeError):
    """A bounded wait ran out."""


def wait_for(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.005) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


# -- /proc readings -------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    """Resident set size of a process, MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far, seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_rollup(pid: int) -> dict[str, float]:
    """``Rss``, ``Pss`` and ``Uss`` (private clean + dirty) of a process, MiB, from
    ``/proc/PID/smaps_rollup`` (empty when it is gone): RSS counts the shared libraries' pages
    in full, PSS a share of them, USS none."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return {}
    kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines)}
    return {
        "Rss": kib.get("Rss", 0) / 1024.0,
        "Pss": kib.get("Pss", 0) / 1024.0,
        "Uss": (kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)) / 1024.0,
    }


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of all of a process's threads so far: an idle
    process's count grows by its wake-ups (timers, poll loops)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                    if "ctxt_switches:" in line:
                        total += int(line.split()[1])
    return total


class RssSampler:
    """Samples a process's RSS on a thread until stopped; keeps the peak and the samples."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - t0, rss_mb(self.pid)))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak(self) -> float:
        return max((m for _t, m in self.samples), default=0.0)


# -- brokers ----------------------------------------------------------------------------------
def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


class Broker:
    """A broker process on a fixed loopback port; ``restart`` keeps the port (no persistence)."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def command(self) -> list[str]:
        if self.kind == "mosquitto":
            binary = mosquitto_binary()
            if binary is None:
                raise RuntimeError("mosquitto is not installed")
            conf = self.workdir / f"mosquitto-{self.port}.conf"
            lines = [
                f"listener {self.port} {HOST}",
                "persistence false",
                "allow_anonymous true",
                "max_queued_messages 0",
                "max_inflight_messages 0",
                "set_tcp_nodelay true",
                "log_dest stdout",
                "log_type error",
            ]
            if os.geteuid() == 0:
                lines.append("user root")
            conf.write_text("\n".join(lines) + "\n")
            return [binary, "-c", str(conf)]
        return [sys.executable, "-m", "lifelong", "broker", "--host", HOST, "--port", str(self.port)]

    def start(self, timeout: float = 30.0) -> None:
        with (self.workdir / f"broker-{self.kind}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _more_files(self.proc.pid)
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.kind} broker exited with {proc.returncode}")
            return port_open(self.port)

        wait_for(up, timeout=timeout, what=f"{self.kind} broker on port {self.port}", interval=0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        wait_for(lambda: not port_open(self.port), timeout=10, what="the broker port to close", interval=0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


BROKER_FILES = 65_536
"""Open files the broker may have: many-nodes keeps its 10,000 simulated sessions connected (the
storm uses them) while 10,000 raw ones connect for the reference, over a soft limit of 20,000."""


def _more_files(pid: int) -> None:
    """Raise the just-started broker's open-file limit towards ``BROKER_FILES`` (``prlimit``; the
    hard limit too when allowed: root), as far as the system lets it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, BROKER_FILES)
    with contextlib.suppress(ValueError, OSError):
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (want, max(hard, want)))
        return
    with contextlib.suppress(ValueError, OSError):
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))


def available_brokers() -> list[str]:
    return (["mosquitto"] if mosquitto_binary() else []) + ["amqtt"]


# -- lifelong processes -------------------------------------------------------------------------
@functools.cache
def compile_bytecode() -> None:
    """Compile the ``lifelong`` package's modules once, as ``pip install`` does.

    An installed ``lifelong`` has its bytecode; an editable checkout run with
    ``PYTHONDONTWRITEBYTECODE=1`` has none, and every process then compiles each of its modules
    at start: that cost 1.7 MiB of the idle LC's RSS (docs/performance.md, "LC"), which is not
    what an edge host runs. Writes ``__pycache__`` folders next to the sources (ignored by git).
    """
    for package in ("lifelong", "lifelong.common", "lifelong.edge", "lifelong.cloud", "lifelong.broker"):
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(folder, quiet=1)


class Proc:
    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.name = name
        self.args = args
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        compile_bytecode()
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_")}
        cmd = [sys.executable, "-m", "lifelong", "--log-level", "WARNING", *self.args]
        with (self.workdir / f"{self.name}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = (self.workdir / f"{self.name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


MAX_NODES = 20_000
"""The benchmark GM's node bound (``lifelong gm --max-nodes``): room for 10,000 simulated nodes
and the real LCs, which say hello first."""


class GM(Proc):
    def __init__(self, workdir: Path, broker_url: str) -> None:
        self.api_port = free_port()
        args = [
            "gm",
            "--broker",
            broker_url,
            "--store",
            f"sqlite:{workdir / 'gm' / 'store.db'}",
            "--api-port",
            str(self.api_port),
            "--prefix",
            PREFIX,
            # the many-nodes scenario's simulated nodes plus the benchmark's own LCs
            "--max-nodes",
            str(MAX_NODES),
        ]
        super().__init__("gm", args, workdir)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{HOST}:{self.api_port}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    def apply(self, obj: dict[str, Any]) -> Any:
        return self.api("POST", "/api/v1/apply", obj)

    def wait_ready(self) -> None:
        def healthy() -> bool:
            self.check()
            try:
                return bool(self.api("GET", "/healthz") == b"ok\n")
            except (urllib.error.URLError, OSError):
                return False

        wait_for(healthy, timeout=30, what="the GM API", interval=0.05)

    def online(self) -> set[str]:
        items = self.api("GET", "/api/v1/nodes")["items"]
        return {n["node"] for n in items if n["online"] and n["lastHello"] > 0}

    def wait_online(self, node: str, timeout: float = 30) -> None:
        def ok() -> bool:
            self.check()
            return node in self.online()

        wait_for(ok, timeout=timeout, what=f"{node} online at the GM", interval=0.05)


class LC(Proc):
    def __init__(self, workdir: Path, node: str, broker_url: str) -> None:
        self.node = node
        self.state_dir = workdir / f"lc-{node}"
        self.worker_api_port = free_port()
        args = [
            "lc",
            "--node",
            node,
            "--broker",
            broker_url,
            "--prefix",
            PREFIX,
            "--state-dir",
            str(self.state_dir),
            "--worker-api-port",
            str(self.worker_api_port),
            "--metrics-port",
            "0",
        ]
        super().__init__(f"lc-{node}", args, workdir)

    def post_info(self, worker: str, body: dict[str, Any]) -> None:
        req = urllib.request.Request(
            f"http://{HOST}:{self.worker_api_port}/sedna/workers/{worker}/info",
            data=json.dumps(body).encode(),
            method="POST",
        )
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()


# -- a spy on the bus ---------------------------------------------------------------------------
class Spy:
    """A plain paho client that records (monotonic time, topic, payload) of what it sees.

    Decoding happens later, on the caller's thread, so the spy's network thread stays cheap.
    """

    def __init__(self, port: int, filters: list[str]) -> None:
        self.seen: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-spy-{os.getpid()}")
        self._filters = list(filters)
        self.client.on_connect = lambda c, *a: c.subscribe([(f, 1) for f in self._filters])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect(HOST, port)
        self.client.loop_start()
        if not self._subscribed.wait(15):
            raise BenchTimeout("the spy could not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        item = (time.monotonic(), msg.topic, bytes(msg.payload))
        with self._lock:
            self.seen.append(item)

    def add(self, filters: list[str]) -> None:
        """Subscribe to more topics (QoS 1), waiting for the broker's SUBACK."""
        self._subscribed.clear()
        self._filters.extend(filters)
        self.client.subscribe([(f, 1) for f in filters])
        if not self._subscribed.wait(15):
            raise BenchTimeout("the spy could not subscribe")

    def remove(self, filters: list[str]) -> None:
        """Unsubscribe (what it no longer needs to see would only load the broker)."""
        for f in filters:
            self._filters.remove(f)
        self.client.unsubscribe(filters)

    def since(self, index: int) -> list[tuple[float, str, bytes]]:
        with self._lock:
            return self.seen[index:]

    def mark(self) -> int:
        with self._lock:
            return len(self.seen)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
