"""Real MQTT brokers for tests: Debian's mosquitto, testcontainers' mosquitto, embedded amqtt.

Each ``Broker`` runs on its own free port on loopback and can be stopped, started again on
the same port (a broker restart without persistence) and restarted. Tests get them through
the ``broker`` fixture in ``tests/conftest.py``, parametrised over every broker available.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness import reaper
from harness.waiting import free_port, port_open, wait_for

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
SHIPPED_MOSQUITTO_ACL = REPO / "deploy" / "mosquitto" / "acl"


def mosquitto_binary() -> str | None:
    """The mosquitto broker binary, on PATH or in Debian's /usr/sbin."""
    found = shutil.which("mosquitto")
    if found:
        return found
    candidate = "/usr/sbin/mosquitto"
    return candidate if os.access(candidate, os.X_OK) else None


def docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        out = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


@dataclass
class Users:
    """Credentials for a broker with authentication: username -> password."""

    passwords: dict[str, str] = field(default_factory=dict)

    def write_mosquitto_passwd(self, path: Path) -> Path:
        """Write a mosquitto password file (hashed by mosquitto_passwd when present)."""
        tool = shutil.which("mosquitto_passwd")
        if tool is None:
            raise RuntimeError("mosquitto_passwd is needed to make a password file")
        path.write_text("")
        for user, password in self.passwords.items():
            subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)
        return path


class Broker:
    """A broker process on a fixed loopback port."""

    kind = "abstract"

    def __init__(
        self, workdir: Path, *, acl: bool = False, users: Users | None = None, prefix: str = "lifelong/v1"
    ) -> None:
        self.workdir = workdir
        self.host = HOST
        self.port = free_port()
        self.acl = acl
        self.users = users
        self.prefix = prefix
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.kind}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def edge_port(self) -> int:
        """Where the LC side of a test connects: this broker (another node of a cluster,
        harness/rabbitmq.py)."""
        return self.port

    @property
    def edge_url(self) -> str:
        return f"mqtt://{self.host}:{self.edge_port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None, "broker already running"
        log = self.log_path.open("ab")
        self.proc = reaper.started(
            subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
        log.close()

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}: {self.log_tail()}")
            return port_open(self.host, self.port)

        wait_for(up, timeout=timeout, what=f"{self.kind} to listen on port {self.port}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL). Without persistence it forgets everything."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        wait_for(
            lambda: not port_open(self.host, self.port),
            timeout=timeout,
            what=f"{self.kind} port {self.port} to close",
        )

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"<{self.kind} broker {self.url}{' acl' if self.acl else ''}>"


class MosquittoBroker(Broker):
    """Debian's mosquitto binary with a generated config (persistence off)."""

    kind = "mosquitto"

    def command(self) -> list[str]:
        binary = mosquitto_binary()
        assert binary is not None
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        lines = [
            f"listener {self.port} {self.host}",
            "persistence false",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto drops to the `mosquitto` user, which cannot read pytest's
            # 0700 temporary directories (password and ACL files): stay root in tests.
            lines.append("user root")
        if self.users is not None:
            passwd = self.users.write_mosquitto_passwd(self.workdir / f"passwd-{self.port}")
            # As deploy/mosquitto/mosquitto.conf: the client id is the user name.
            lines += ["allow_anonymous false", f"password_file {passwd}", "use_username_as_clientid true"]
        else:
            lines.append("allow_anonymous true")
        if self.acl:
            acl_text = SHIPPED_MOSQUITTO_ACL.read_text().replace("lifelong/v1", self.prefix)
            acl_file = self.workdir / f"acl-{self.port}"
            acl_file.write_text(acl_text)
            lines.append(f"acl_file {acl_file}")
        conf.write_text("\n".join(lines) + "\n")
        return [binary, "-c", str(conf)]


class AmqttBroker(Broker):
    """The embedded broker, as users run it: ``lifelong broker``."""

    kind = "amqtt"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "lifelong",
            "broker",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--prefix",
            self.prefix,
        ]
        if self.users is not None:
            passwd = self.users.write_mosquitto_passwd(self.workdir / f"passwd-{self.port}")
            cmd += ["--password-file", str(passwd)]
        if self.acl:
            cmd.append("--acl")
        return cmd


class ContainerMosquittoBroker(Broker):
    """eclipse-mosquitto in Docker through testcontainers, for machines without the binary.

    Restart keeps the same host port by re-creating the container with the same binding.
    """

    kind = "mosquitto-container"
    image = "eclipse-mosquitto:2"

    def __init__(self, workdir: Path, **kwargs: object) -> None:
        super().__init__(workdir, **kwargs)  # type: ignore[arg-type]
        self._container: object | None = None

    def command(self) -> list[str]:  # pragma: no cover - not a subprocess
        return []

    def start(self, timeout: float = 60.0) -> None:
        from testcontainers.core.container import DockerContainer

        if self.users is not None or self.acl:
            raise RuntimeError("the container broker supports anonymous access only")
        conf = self.workdir / "mosquitto-container.conf"
        conf.write_text(
            "listener 1883 0.0.0.0\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"
        )
        container = DockerContainer(self.image).with_bind_ports(1883, self.port)
        container = container.with_volume_mapping(str(conf), "/mosquitto/config/mosquitto.conf", "ro")
        container.start()
        self._container = container
        wait_for(lambda: port_open(self.host, self.port), timeout=timeout, what="container mosquitto")

    def stop(self, timeout: float = 10.0) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.stop()  # type: ignore[attr-defined]
        wait_for(lambda: not port_open(self.host, self.port), timeout=timeout, what="container port to close")

    kill = stop


def available_kinds() -> list[str]:
    """Which brokers this machine can run, mosquitto first."""
    kinds = []
    if mosquitto_binary() is not None:
        kinds.append("mosquitto")
    elif docker_works():
        kinds.append("mosquitto-container")
    kinds.append("amqtt")
    return kinds


BROKER_CLASSES: dict[str, type[Broker]] = {
    "mosquitto": MosquittoBroker,
    "mosquitto-container": ContainerMosquittoBroker,
    "amqtt": AmqttBroker,
}


def make_broker(kind: str, workdir: Path | None = None, **kwargs: object) -> Broker:
    wd = workdir or Path(tempfile.mkdtemp(prefix="lifelong-broker-"))
    return BROKER_CLASSES[kind](wd, **kwargs)  # type: ignore[arg-type]
