"""The broker configuration of deploy/k8s-edge-tls, run by a real mosquitto with the
certificates and users the docs' walk-through makes (docs/operations.md, the
``commands: kubernetes`` block: its openssl and mosquitto_passwd lines, with the server name
``broker.example.com`` replaced by ``localhost``).

Only the listeners' ports (free ports on 127.0.0.1 instead of 1883 and 8883) and the files'
paths (the Pod's /mosquitto/config and /mosquitto/tls mounts) are changed. An edge node's user
logs in over TLS when it trusts the CA; a wrong password is refused on the TLS listener as on
the plain one; a client that does not trust the CA never gets past the handshake.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from harness.brokers import mosquitto_binary
from harness.deploy import ROOT, run_shell
from harness.waiting import free_port, port_open, wait_for
from paho.mqtt.enums import CallbackAPIVersion

EDGE_TLS_CONF = ROOT / "deploy" / "k8s-edge-tls" / "mosquitto.conf"
WALKTHROUGH = re.compile(r"<!-- commands: kubernetes -->\s*```sh\n(.*?)```", re.S)


def credentials(work: Path) -> None:
    (block,) = WALKTHROUGH.findall((ROOT / "docs" / "operations.md").read_text())
    for line in block.strip().splitlines():
        if line.startswith(("openssl ", "printf ", "cat ")):
            done = run_shell(line.replace("broker.example.com", "localhost"), cwd=work, timeout=120)
            assert done.returncode == 0, f"{line}: {done.stderr}"


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (Debian: apt-get install mosquitto)")
    credentials(tmp_path)
    plain, tls = free_port(), free_port()
    conf = EDGE_TLS_CONF.read_text()
    for old, new in {
        "listener 1883": f"listener {plain} 127.0.0.1",
        "listener 8883": f"listener {tls} 127.0.0.1",
        "password_file /mosquitto/config/passwd": f"password_file {tmp_path / 'passwd'}",
        "acl_file /mosquitto/config/acl": f"acl_file {ROOT / 'deploy' / 'mosquitto' / 'acl'}",
        "certfile /mosquitto/tls/tls.crt": f"certfile {tmp_path / 'server.crt'}",
        "keyfile /mosquitto/tls/tls.key": f"keyfile {tmp_path / 'server.key'}",
    }.items():
        conf, n = re.subn(rf"^{re.escape(old)}$", new, conf, flags=re.M)
        assert n == 1, f"{EDGE_TLS_CONF.name}: expected one line {old!r}"
    if os.geteuid() == 0:  # mosquitto would drop to its own user, who cannot read tmp_path
        conf += "\nuser root\n"
    (tmp_path / "mosquitto.conf").write_text(conf)
    log = (tmp_path / "mosquitto.log").open("w")
    proc = subprocess.Popen([binary, "-c", str(tmp_path / "mosquitto.conf")], stdout=log, stderr=log)
    try:
        wait_for(lambda: port_open("127.0.0.1", tls) or proc.poll() is not None, what="mosquitto's TLS port")
        assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
        yield plain, tls, tmp_path
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def connect(port: int, user: str, password: str, ca: Path | None) -> object:
    """The CONNACK reason code, or the exception the connection attempt raised."""
    answer: list[object] = []
    got = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-tls-test")
    client.username_pw_set(user, password)
    if ca is not None:
        client.tls_set(ca_certs=str(ca))

    def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        answer.append(reason)
        got.set()

    client.on_connect = on_connect
    try:
        client.connect("localhost", port, keepalive=10)
    except (OSError, ssl.SSLError) as exc:
        return exc
    client.loop_start()
    try:
        wait_for(got.is_set, what=f"CONNACK for {user}")
    finally:
        client.loop_stop()
        client.disconnect()
    return answer[0]


def test_edge_node_logs_in_over_tls_with_the_walkthroughs_ca_and_password(
    tls_broker: tuple[int, int, Path],
) -> None:
    _plain, tls, work = tls_broker
    password = (work / "edge-1.password").read_text().strip()
    reason = connect(tls, "edge-1", password, work / "ca.crt")
    assert not isinstance(reason, Exception), reason
    assert not reason.is_failure, reason  # type: ignore[attr-defined]

    refused = connect(tls, "edge-1", "not-the-password", work / "ca.crt")
    assert not isinstance(refused, Exception) and refused.is_failure, refused  # type: ignore[attr-defined]


def test_client_that_does_not_trust_the_ca_fails_the_handshake(tls_broker: tuple[int, int, Path]) -> None:
    _plain, tls, work = tls_broker
    password = (work / "edge-1.password").read_text().strip()
    # the system CAs do not include the walk-through's private CA
    outcome = connect(
        tls, "edge-1", password, ca=Path(ssl.get_default_verify_paths().cafile or "/nonexistent")
    )
    assert isinstance(outcome, ssl.SSLError | OSError), outcome
