"""Identity and access, with the real processes.

* TLS with per-node client certificates, for real: the test makes its own CA, a server
  certificate and one client certificate per identity (``gm``, ``node-a``, ``node-b``) with
  the openssl commands of docs/security.md, run as written, runs mosquitto with the listener
  block of docs/security.md, ``require_certificate true`` + ``use_identity_as_username
  true`` + ``use_username_as_clientid true`` and the shipped ACL, and connects a real GM and
  two real LCs through it (``--tls-ca-file``/``--tls-cert``/``--tls-key``). Reports flow and
  are applied once; each LC converges on its own job.
* Refused: a client without a certificate, one whose certificate another CA signed, and an
  LC that says it is ``node-a`` while holding ``node-b``'s certificate (the broker knows it as
  ``node-b``, the ACL keeps it out of ``node/node-a/``, the GM never sees ``node-a``).
* A replayed old report (same node, epoch and seq, another body) is ignored by the GM.

The envelope-node-differs-from-topic-node rejection is covered (and not repeated here) by
tests/integration/test_gm_bus.py::test_bad_envelopes_are_counted_and_the_gm_survives; the
ACLs of both brokers by tests/integration/test_broker_cli.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from harness import faults
from harness.brokers import SHIPPED_MOSQUITTO_ACL, Broker, mosquitto_binary
from harness.faults import NODE, NS, Rig, Tally, applied_counts, epoch_of, queue_reports, worker_infos
from harness.processes import LCProcess
from harness.waiting import free_port, port_open, wait_for

from lifelong.common.bus import BusClient, ReconnectPolicy, TLSParameters
from lifelong.common.codec import encode
from lifelong.common.envelope import Envelope, Op
from lifelong.common.errors import ConnectError
from lifelong.common.topics import Topics

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

PREFIX = "lifelong/v1"
SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


@dataclass
class PKI:
    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name

    def client_args(self, who: str) -> list[str]:
        return [
            "--tls-ca-file",
            str(self.path("ca.crt")),
            "--tls-cert",
            str(self.path(f"{who}.crt")),
            "--tls-key",
            str(self.path(f"{who}.key")),
        ]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(cwd: Path, ca: str, name: str, cn: str, ext: str | None = None) -> None:
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={cn}",
        cwd=cwd,
    )
    extra = ["-extfile", ext] if ext else []
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.crt", "-days", "2", *extra, cwd=cwd,
    )  # fmt: skip


def _doc_block(marker: str) -> str:
    """The fenced block after ``<!-- marker -->`` in docs/security.md."""
    found = re.findall(rf"<!-- {re.escape(marker)} -->\s*```\w*\n(.*?)```", SECURITY_DOC.read_text(), re.S)
    assert len(found) == 1, f"docs/security.md must keep one <!-- {marker} --> block"
    return str(found[0])


def make_pki(d: Path) -> PKI:
    """The CA and certificates made by the commands of docs/security.md, run as written, plus a
    rogue CA and a certificate it signed for node-a."""
    d.mkdir(parents=True, exist_ok=True)
    for line in _doc_block("commands: tls-setup").strip().splitlines():
        subprocess.run(["bash", "-euc", line], cwd=d, check=True, capture_output=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue-ca.key",
             "-out", "rogue-ca.crt", "-days", "2", "-subj", "/CN=lifelong-rogue-ca", cwd=d)  # fmt: skip
    _issue(d, "rogue-ca", "rogue-node-a", NODE)
    return PKI(d)


@dataclass
class TLSMosquitto:
    port: int
    pki: PKI
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"mqtts://localhost:{self.port}"


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TLSMosquitto]:
    binary = mosquitto_binary()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs the mosquitto binary and openssl")
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    acl = tmp_path / "acl"
    acl.write_text(SHIPPED_MOSQUITTO_ACL.read_text())
    # The listener of docs/security.md as written, with only the port and certificate paths put in.
    documented = _doc_block("config: mosquitto-tls").replace("/mosquitto/config/certs/", f"{pki.dir}/")
    documented = documented.replace("listener 8883", f"listener {port} 127.0.0.1")
    lines = [
        *documented.strip().splitlines(),
        "allow_anonymous false",
        f"acl_file {acl}",
        "persistence false",
        "log_dest stdout",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    conf = tmp_path / "mosquitto-tls.conf"
    conf.write_text("\n".join(lines) + "\n")
    log = tmp_path / "mosquitto-tls.log"
    with log.open("ab") as fh:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open("127.0.0.1", port), timeout=20, what="mosquitto TLS listener")
        yield TLSMosquitto(port, pki, proc, log)
    finally:
        proc.terminate()
        proc.wait(10)


def test_gm_and_lc_over_tls_with_per_node_certificates(tmp_path: Path, tls_broker: TLSMosquitto) -> None:
    tally = Tally("TLS, per-node client certificates, ACL (GM + 2 LCs)", "mosquitto-tls")
    pki = tls_broker.pki
    rig = Rig(
        tmp_path,
        tls_broker.url,
        PREFIX,
        gm_extra=pki.client_args("gm"),
        lc_extra=pki.client_args(NODE),
    )
    impostor = LCProcess(
        tmp_path / "impostor",
        node=NODE,
        broker_url=tls_broker.url,
        prefix=PREFIX,
        extra=pki.client_args("node-b"),
    )
    node_b = LCProcess(
        tmp_path, node="node-b", broker_url=tls_broker.url, prefix=PREFIX, extra=pki.client_args("node-b")
    )
    try:
        rig.start_gm()
        # An LC calling itself node-a with node-b's certificate: the broker knows it as node-b.
        impostor.start()
        wait_for(
            lambda: "hello sent" in impostor.log_path.read_text(errors="replace"),
            timeout=30,
            what=f"the impostor connected\n{impostor.log_tail()}",
        )
        node_b.start()  # the real node-b, after it
        node_b.wait_online(rig.gm)
        assert not rig.gm.node_online(NODE), "node-b's certificate spoke for node-a"
        impostor.kill()

        rig.start_lc()  # the real node-a with its own certificate
        rig.apply()
        epoch = epoch_of(rig.lc.state_dir)
        seqs = queue_reports(rig.lc.state_dir, 0, 300)
        t0 = time.monotonic()
        rig.wait_drained(epoch, seqs)
        tally.converge_seconds.append(time.monotonic() - t0)
        tally.runs = 1
        tally.count(rig.gm, epoch, seqs)
        assert worker_infos(rig.gm)["w299"] == {"n": 299}

        # The second LC converges on a job of its own through the same TLS broker.
        data_b = tmp_path / "data-b" / "samples.txt"
        data_b.parent.mkdir()
        data_b.write_text("x\ny\n")
        rig.apply_objects(
            [
                _on_node(faults.dataset_manifest("ds-b", data_b), "node-b"),
                _on_node(faults.job_manifest("job-b", "ds-b", tmp_path / "out-b"), "node-b"),
            ]
        )
        wait_for(
            lambda: _lc_job_rv(node_b.state_dir, "job-b") == rig.gm_jobs().get("job-b"),
            timeout=60,
            what=f"node-b to hold job-b at the GM's version\n{node_b.log_tail()}",
        )
        wait_for(
            lambda: ((rig.gm.get("Dataset", "ds-b") or {}).get("status") or {}).get("numberOfSamples") == 2,
            timeout=60,
            what=f"node-b's dataset status at the GM\n{node_b.log_tail()}",
        )
        tally.note = (
            "require_certificate + use_identity_as_username + use_username_as_clientid; two LCs; "
            "impostor (node-b cert as node-a) kept out"
        )
        tally.record()
        assert (tally.lost, tally.duplicated) == (0, 0), tally
    finally:
        for p in (impostor, node_b):
            if p.alive():
                p.kill()
        rig.stop()


def _on_node(obj: dict[str, Any], node: str) -> dict[str, Any]:
    """``obj`` with every ``nodeName`` set to ``node``."""
    text = json.dumps(obj).replace(f'"nodeName": "{NODE}"', f'"nodeName": "{node}"')
    out: dict[str, Any] = json.loads(text)
    return out


def _lc_job_rv(state_dir: Path, name: str) -> str | None:
    try:
        conn = sqlite3.connect(f"file:{state_dir / 'lc.db'}?mode=ro", uri=True, timeout=10)
    except sqlite3.OperationalError:
        return None
    try:
        row = conn.execute(
            "SELECT rv FROM resources WHERE kind='LifelongLearningJob' AND ns=? AND name=?", (NS, name)
        ).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return None if row is None else str(row[0])


def _client(tls_broker: TLSMosquitto, tls: TLSParameters) -> BusClient:
    return BusClient(
        client_id=f"probe-{uuid.uuid4().hex[:6]}",
        address=tls_broker.url,
        tls=tls,
        reconnect=ReconnectPolicy(initial=0.1, maximum=0.5),
    )


@pytest.mark.parametrize("cert", [None, "rogue-node-a"], ids=["no-certificate", "certificate-of-another-ca"])
def test_a_node_without_a_valid_certificate_is_refused(tls_broker: TLSMosquitto, cert: str | None) -> None:
    pki = tls_broker.pki
    tls = TLSParameters(
        ca_certs=pki.path("ca.crt"),
        certfile=pki.path(f"{cert}.crt") if cert else None,
        keyfile=pki.path(f"{cert}.key") if cert else None,
    )
    with _client(tls_broker, tls) as c:
        wait_for(lambda: c.last_error is not None, timeout=20, what="the refusal")
        assert isinstance(c.last_error, ConnectError), c.last_error
        assert not c.connected and c.stats.connects == 0
        wait_for(lambda: c.stats.connect_attempts >= 2, timeout=20, what="a second refused attempt")
        assert not c.connected and c.stats.connects == 0
    t = Tally(
        f"TLS refused: {'no certificate' if cert is None else 'certificate of another CA'}", "mosquitto-tls"
    )
    t.runs, t.tried = 1, c.stats.connect_attempts
    t.note = "every connect attempt refused (0 sessions)"
    t.record()


def test_a_replayed_old_report_is_ignored(tmp_path: Path, broker: Broker) -> None:
    """An old report (node, epoch, seq already applied) published again with another body, as
    a replay would: acknowledged as a duplicate, never applied."""
    rig = Rig(tmp_path, broker.url, broker.prefix)
    try:
        rig.start_gm()
        rig.start_lc()
        rig.apply()
        epoch = epoch_of(rig.lc.state_dir)
        seqs = queue_reports(rig.lc.state_dir, 0, 5)
        rig.wait_drained(epoch, seqs)
        assert worker_infos(rig.gm)["w0"] == {"n": 0}
        topics = Topics(broker.prefix)
        replay = Envelope.new(
            node=NODE,
            kind="LifelongLearningJob",
            ns=NS,
            name="job1",
            op=Op.REPORT,
            seq=seqs[0],
            body={"event": "workerInfo", "worker": "w0", "info": {"n": "replayed"}},
        )
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"replayer-{uuid.uuid4().hex[:6]}")
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            for _ in range(3):
                client.publish(
                    topics.up(NODE, "LifelongLearningJob", NS, "job1"), encode(replay), qos=1
                ).wait_for_publish(10)
        finally:
            client.loop_stop()
            client.disconnect()

        def duplicates() -> float:
            text = rig.gm.api("GET", "/metrics").decode()
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("lifelong_gm_upstream_duplicate_total")
            )

        wait_for(lambda: duplicates() >= 3, timeout=20, what="three duplicates counted")
        assert worker_infos(rig.gm)["w0"] == {"n": 0}  # the replay changed nothing
        assert applied_counts(rig.gm)[(epoch, seqs[0])] == 1
        t = Tally("replayed old report (same node/epoch/seq, new body)", broker.kind, runs=1, tried=3)
        t.note = "3 replays: counted as duplicates, acknowledged, never applied"
        t.record()
    finally:
        rig.stop()


def test_gm_and_lc_processes_accept_the_tls_flags() -> None:
    """``--tls-cert``/``--tls-key``/``--tls-ca-file`` are documented on both commands."""
    for cmd in (["gm", "--help"], ["lc", "--help"]):
        out = subprocess.run(
            [sys.executable, "-m", "lifelong", *cmd],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for flag in ("--tls-ca-file", "--tls-cert", "--tls-key"):
            assert flag in out, (cmd, flag)
