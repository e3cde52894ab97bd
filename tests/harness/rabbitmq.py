"""A two-node RabbitMQ cluster with the MQTT plugin, on one machine, for the ``rabbitmq`` broker kind.

Who uses it: ``tests/conftest.py`` starts one ``RabbitCluster`` per pytest process (a start takes
several seconds, too long for every test) and hands it to the tests marked ``clustered`` as the
``broker`` fixture: the GM connects to node 1 (``url``), the LCs to node 2 (``edge_url``), so
every message between them crosses the cluster. Tests keep apart by their topic prefix.

It runs Debian's ``rabbitmq-server`` (3.10) as the current user, never the system service: its own
epmd on a free port, two nodes with their own RABBITMQ_NODENAME, ports, Mnesia and log
directories, ``enabled_plugins`` (``rabbitmq_mqtt``; node 1 also serves the management API on a
free loopback port, which ``purge`` uses between tests, and node 2 runs its agent), a shared
Erlang cookie in a private HOME, MQTT listeners on free loopback ports; node 2 joins node 1 with
``rabbitmqctl join_cluster``.
Users, permissions and topic permissions (the shipped ACL, deploy/mosquitto/acl, in RabbitMQ's
terms: ``/`` in a topic is ``.`` in a routing key) are loaded from a definitions file at boot.
Every process is registered with ``harness/reaper.py`` and stopped by pid.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from harness import reaper
from harness.waiting import free_port, port_open, wait_for

HOST = "127.0.0.1"
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
"""Debian's scripts that run a node as the calling user (``/usr/sbin/rabbitmq-server`` wants root)."""


class Unavailable(Exception):
    """rabbitmq-server (or Erlang's epmd) is not installed."""


def binaries() -> Path:
    """The directory of ``rabbitmq-server`` and ``rabbitmqctl``, or ``Unavailable`` saying why not."""
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if not os.access(RABBIT_BIN / tool, os.X_OK):
            raise Unavailable(f"{RABBIT_BIN / tool} is missing (apt-get install rabbitmq-server)")
    if shutil.which("epmd") is None:
        raise Unavailable("Erlang's epmd is not on PATH (apt-get install rabbitmq-server)")
    return RABBIT_BIN


def password_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def topic_permissions(user: str, gm_user: str) -> list[dict[str, str]]:
    """deploy/mosquitto/acl as RabbitMQ topic permissions (regexes over routing keys on
    ``amq.topic``, where MQTT's ``/`` is ``.``). Any prefix ``<x>/v1`` is allowed, so tests with
    their own prefix share one cluster; a node reads its down topics and the GM's presence and
    writes its up topics and its presence; the GM reads and writes everything; ``observer``
    reads everything."""
    any_prefix = r"^[^.]+\.v1\."
    if user == gm_user:
        write, read = any_prefix, any_prefix
    elif user == "observer":
        write, read = "^$", any_prefix
    else:
        node = user.replace(".", r"\.")
        write = rf"{any_prefix}node\.{node}\.(up\..+|presence)$"
        read = rf"{any_prefix}(node\.{node}\.down\..+|gm\.presence)$"
    return [{"user": user, "vhost": "/", "exchange": "amq.topic", "write": write, "read": read}]


class RabbitCluster:
    """Two RabbitMQ nodes clustered on loopback. Looks like a ``harness.brokers.Broker`` to the
    tests that only connect (``url``, ``host``, ``port``, ``edge_url``, ``edge_port``)."""

    kind = "rabbitmq"

    def __init__(self, workdir: Path, users: dict[str, str] | None = None, gm_user: str = "gm") -> None:
        self.bin = binaries()
        self.workdir = workdir
        self.host = HOST
        self.users = dict(users or {})
        self.gm_user = gm_user
        self.prefix = "lifelong/v1"  # the topic prefix of the test using the cluster (conftest sets it)
        tag = secrets.token_hex(3)
        self.nodenames = [f"lifelong{tag}n1@localhost", f"lifelong{tag}n2@localhost"]
        self.epmd_port = free_port()
        self.mqtt_ports = [free_port(), free_port()]
        self.amqp_ports = [free_port(), free_port()]
        self.dist_ports = [free_port(), free_port()]
        self.management_port = free_port()  # node 1's HTTP API, for purge
        self.home = workdir / "home"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.start_seconds: float | None = None

    # -- what tests read ------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.mqtt_ports[0]

    @property
    def url(self) -> str:
        """Node 1: where the GM connects."""
        return f"mqtt://{self.host}:{self.mqtt_ports[0]}"

    @property
    def edge_port(self) -> int:
        return self.mqtt_ports[1]

    @property
    def edge_url(self) -> str:
        """Node 2: where the LCs connect."""
        return f"mqtt://{self.host}:{self.mqtt_ports[1]}"

    # -- life cycle -----------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["HOME"] = str(self.home)  # the shared Erlang cookie is $HOME/.erlang.cookie
        env["ERL_EPMD_PORT"] = str(self.epmd_port)
        env["RABBITMQ_CONF_ENV_FILE"] = str(self.workdir / "rabbitmq-env.conf")  # not /etc's
        return env

    def _node_env(self, i: int) -> dict[str, str]:
        d = self.workdir / f"node{i + 1}"
        env = self._env()
        env.update(
            RABBITMQ_NODENAME=self.nodenames[i],
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.amqp_ports[i]),
            RABBITMQ_DIST_PORT=str(self.dist_ports[i]),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_PID_FILE=str(d / "pid"),
            RABBITMQ_LOGS="-",
        )
        return env

    def _write_files(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        (self.workdir / "rabbitmq-env.conf").write_text("")
        definitions = self.workdir / "definitions.json"
        users = {"guest": "guest", **self.users}
        definitions.write_text(
            json.dumps(
                {
                    "users": [
                        {
                            "name": u,
                            "password_hash": password_hash(p),
                            "hashing_algorithm": "rabbit_password_hashing_sha256",
                            "tags": "administrator" if u == "guest" else "",
                        }
                        for u, p in users.items()
                    ],
                    "vhosts": [{"name": "/"}],
                    "permissions": [
                        {"user": u, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
                        for u in users
                    ],
                    "topic_permissions": [
                        tp for u in self.users for tp in topic_permissions(u, self.gm_user)
                    ],
                }
            )
        )
        for i in range(2):
            d = self.workdir / f"node{i + 1}"
            d.mkdir(parents=True, exist_ok=True)
            # node 1 serves the management API (purge lists and deletes queues through it: a
            # rabbitmqctl per test booted an Erlang VM, 2 s idle and past 10 s under load);
            # node 2 runs its agent, which answers for the queues node 2 holds
            management = "rabbitmq_management" if i == 0 else "rabbitmq_management_agent"
            (d / "enabled_plugins").write_text(f"[rabbitmq_mqtt,{management}].\n")
            listener = (
                [f"management.tcp.ip = {self.host}", f"management.tcp.port = {self.management_port}"]
                if i == 0
                else []
            )
            (d / "rabbitmq.conf").write_text(
                "\n".join(
                    [
                        *listener,
                        f"mqtt.listeners.tcp.default = {self.host}:{self.mqtt_ports[i]}",
                        # anonymous MQTT clients are `guest` (the tests without users)
                        "mqtt.allow_anonymous = true",
                        "mqtt.default_user = guest",
                        "mqtt.default_pass = guest",
                        "mqtt.vhost = /",
                        "mqtt.exchange = amq.topic",
                        # a node that is gone keeps its QoS 1 queue; bound it (docs/operations.md)
                        "mqtt.subscription_ttl = 86400000",
                        f"load_definitions = {definitions}",
                        "log.console = true",
                        "log.console.level = warning",
                        "log.file = false",
                    ]
                )
                + "\n"
            )

    def ctl(self, node: int, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n <node> args...``; raises with its output if it fails."""
        cmd = [str(self.bin / "rabbitmqctl"), "-n", self.nodenames[node], *args]
        out = subprocess.run(cmd, env=self._env(), capture_output=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stdout!r} {out.stderr!r}")
        return out.stdout.decode(errors="replace")

    def start(self, timeout: float = 90.0) -> None:
        t0 = time.monotonic()
        self._write_files()
        epmd = shutil.which("epmd")
        assert epmd is not None
        # our own epmd in the foreground, so it is ours to stop (one started by erl would stay)
        self.procs.append(
            reaper.started(
                subprocess.Popen(
                    [epmd, "-port", str(self.epmd_port), "-address", self.host],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        )
        wait_for(lambda: port_open(self.host, self.epmd_port), timeout=10, what="epmd to listen")
        for i in range(2):
            log = (self.workdir / f"node{i + 1}.out").open("ab")
            self.procs.append(
                reaper.started(
                    subprocess.Popen(
                        [str(self.bin / "rabbitmq-server")],
                        env=self._node_env(i),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            )
            log.close()

        def listening(i: int) -> bool:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a RabbitMQ process exited with {p.returncode}: {self.log_tail()}")
            return port_open(self.host, self.mqtt_ports[i])

        for i in range(2):
            wait_for(lambda i=i: listening(i), timeout=timeout, what=f"RabbitMQ node {i + 1}'s MQTT port")
        wait_for(
            lambda: port_open(self.host, self.management_port),
            timeout=timeout,
            what="RabbitMQ node 1's management API",
        )
        self.ctl(1, "stop_app")
        self.ctl(1, "join_cluster", self.nodenames[0])
        self.ctl(1, "start_app")
        wait_for(lambda: listening(1), timeout=timeout, what="RabbitMQ node 2's MQTT port after the join")
        status = self.ctl(0, "cluster_status", "--formatter", "json")
        running = json.loads(status).get("running_nodes", [])
        if sorted(running) != sorted(self.nodenames):
            raise RuntimeError(f"the cluster runs {running}, not {self.nodenames}")
        self.start_seconds = time.monotonic() - t0

    def stop(self, timeout: float = 30.0) -> None:
        """Stop both nodes (SIGTERM, then SIGKILL of their process groups) and epmd, by pid."""
        procs, self.procs = self.procs, []
        for p in reversed(procs):  # the nodes first, epmd last
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)

    def purge(self) -> None:
        """Delete every queue (the MQTT sessions of the test that just ran), so a client id used
        again by the next test starts with no leftover subscription or queued message.

        Through node 1's management API (``GET /api/queues/%2F``, then a ``DELETE`` of each), as
        ``guest`` (an administrator, on loopback); a queue already gone (its session ended
        meanwhile) is not an error. Whatever else fails raises, naming the queue."""

        base = f"http://{self.host}:{self.management_port}/api/queues/%2F"
        with httpx.Client(auth=("guest", "guest"), timeout=60) as client:
            listed = client.get(base, params={"columns": "name"})
            listed.raise_for_status()
            for queue in listed.json():
                name = queue["name"]
                gone = client.delete(f"{base}/{quote(name, safe='')}")
                if gone.status_code not in (204, 404):
                    raise RuntimeError(f"deleting queue {name!r} answered {gone.status_code}: {gone.text}")

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for i in range(2):
            try:
                text = (self.workdir / f"node{i + 1}.out").read_text(errors="replace")
            except OSError:
                continue
            out.append(f"node {i + 1}: " + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"<rabbitmq cluster {self.url} + {self.edge_url}>"


def lc_password_args(broker: object, node: str, workdir: Path) -> list[str]:
    """``lifelong lc`` arguments for ``broker``: none for the anonymous brokers, the node's
    ``--password-file`` on the cluster (its users exist there, and RabbitMQ refuses a known user
    name without its password, which the LC always sends: its user name is the node name)."""
    if not isinstance(broker, RabbitCluster):
        return []
    path = workdir / f"password-{node}"
    path.write_text(broker.users[node])
    path.chmod(0o600)
    return ["--password-file", str(path)]
