"""The commands shown in the docs run as written.

Every ``sh`` block in ``docs/operations.md`` carries a marker saying how it is run, and this
file runs each marked kind:

* ``<!-- commands: client -->``: line by line, in order, against a real broker and a real
  ``lifelong gm`` (only ``--server URL`` is added, for the GM's test port), after an edge node
  ``edge-node`` has said hello the way an LC does;
* ``<!-- commands: client-config -->``: line by line, in order, with ``LIFELONG_CONFIG`` naming a
  scratch copy of the YAML block marked ``<!-- client config file: ... -->`` (``lifelong config``
  speaks to no GM); each line's output is checked;
* ``<!-- commands: kubernetes -->``: line by line by ``sh`` in a scratch folder (holding a link
  to ``deploy/``); ``kubectl`` lines run as written against a REAL kube-apiserver with etcd (the
  ``k8s`` fixture, tests/harness/k8s_cluster.py; only ``--kubeconfig`` and ``-o json`` are
  added), so the namespace, the Secrets and everything ``apply -k`` sends are admitted and
  stored by the server (no kubelet or scheduler runs: nothing starts); the namespace is deleted
  after;
* ``<!-- commands: edge-install -->``: as one ``sh -e`` script in a copy of the repository with
  ``/opt/lifelong`` moved to a scratch folder (a real ``pip install``: this package built from
  the copy, its dependencies from ``harness.deploy.wheelhouse()``, downloaded from the package
  index at most a week before), then ``systemd-analyze verify`` on the shipped unit pointed at
  that folder;
* ``<!-- commands: logs -->``: by tests/integration/test_worker_logs.py, against a real GM and
  LC whose worker writes lines (``lifelong logs`` needs a running worker);
* ``<!-- not run: REASON -->``: not run here (a Docker engine, a cluster, root, systemd or a
  terminal is needed); the reason names what checks them instead.

The ``lifelong ... --help`` commands the README and docs mention run too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from harness.brokers import Broker, make_broker
from harness.deploy import copy_build_context, run_shell, wheelhouse
from harness.k8s_cluster import SHIPPED_NAMESPACE, Cluster
from harness.processes import GMProcess
from harness.waiting import wait_for
from kubernetes import client
from paho.mqtt.enums import CallbackAPIVersion

from lifelong.common.codec import encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.topics import Topics

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- commands: client -->\s*```sh\n(.*?)```", re.S)
MARKED = re.compile(r"(?:<!-- (commands: [a-z-]+|not run: [^>]+?) -->\n)?```sh\n(.*?)```", re.S)
KINDS = (
    "commands: client",
    "commands: client-config",
    "commands: kubernetes",
    "commands: edge-install",
    "commands: logs",
)
CLIENT_CONFIG = re.compile(r"<!-- client config file: [^>]*-->\s*```yaml\n(.*?)```", re.S)
HELP = re.compile(r"`(lifelong(?: [a-z]+)? --help)`")
PREFIX = "lifelong/v1"
NODE = "edge-node"  # the node the atcii sample names


def client_commands() -> list[list[str]]:
    found = BLOCK.findall((ROOT / "docs" / "operations.md").read_text())
    assert len(found) == 1, "docs/operations.md must keep one <!-- commands: client --> block"
    commands = [shlex.split(line) for line in found[0].strip().splitlines()]
    assert all(argv[0] == "lifelong" for argv in commands), commands
    return commands


def help_commands() -> list[list[str]]:
    text = "".join((ROOT / p).read_text() for p in ("README.md", "docs/operations.md", "docs/protocol.md"))
    found = sorted({m for m in HELP.findall(text)} | {"lifelong --help"})
    return [shlex.split(c) for c in found]


def lifelong(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "lifelong"
    return subprocess.run(
        [sys.executable, "-m", "lifelong", *argv[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


@pytest.fixture
def amqtt_broker(tmp_path: Path) -> Iterator[Broker]:
    broker = make_broker("amqtt", tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def say_hello(broker: Broker, depth: int) -> None:
    """Say hello as ``edge-node``'s LC would (docs/protocol.md), with ``depth`` reports in its outbox."""
    body = {"agent": "docs-test/1", "epoch": "epoch-1", "boot": "boot-1", "resources": [],
            "outbox": {"depth": depth, "lowSeq": 1, "nextSeq": depth + 1}}  # fmt: skip
    env = Envelope.new(node=NODE, kind=CONTROL_KIND, op=Op.HELLO, body=body)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="docs-test-edge-node")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(Topics(PREFIX).up_ctl(NODE), encode(env, "json"), qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_client_commands_in_the_docs_run_as_written(amqtt_broker: Broker, tmp_path: Path) -> None:
    commands = client_commands()
    gm = GMProcess(tmp_path, broker_url=amqtt_broker.url, prefix=PREFIX)
    gm.start()
    try:
        gm.wait_ready()
        say_hello(amqtt_broker, depth=2)
        wait_for(
            lambda: any(n["node"] == NODE for n in gm.api("GET", "/api/v1/nodes")["items"]),
            what=f"{NODE}'s hello recorded by the GM",
        )
        seen = []
        for argv in commands:
            done = lifelong([*argv, "--server", gm.server])
            assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr}"
            out = done.stdout
            verb = argv[1]
            output = argv[argv.index("-o") + 1] if "-o" in argv else ""
            if verb == "apply":
                assert out.splitlines() == [
                    "dataset.sedna.io/lifelong-dataset created",
                    "lifelonglearningjob.sedna.io/atcii-classifier-demo created",
                ]
            elif verb == "get" and argv[2] == "ll" and "-w" in argv:
                # watched for --request-timeout seconds, then ended: the list, then the job's
                # changes if the GM made any meanwhile
                assert out.split()[:4] == ["NAME", "STAGE", "STATUS", "AGE"]
                rows = [line.split()[0] for line in out.splitlines()[1:]]
                assert rows[:1] == ["atcii-classifier-demo"] and set(rows) == {"atcii-classifier-demo"}
            elif verb == "get" and argv[2] == "ll" and not output:
                assert out.split()[:4] == ["NAME", "STAGE", "STATUS", "AGE"]
                assert out.splitlines()[1].split()[0] == "atcii-classifier-demo"
            elif verb == "get" and argv[2] == "ds" and output == "yaml":
                doc = yaml.safe_load(out)
                assert [i["metadata"]["name"] for i in doc["items"]] == ["lifelong-dataset"]
            elif verb == "get" and argv[2] == "ll,ds" and output == "name":
                assert out.splitlines() == [
                    "lifelonglearningjob.sedna.io/atcii-classifier-demo",
                    "dataset.sedna.io/lifelong-dataset",
                ]
            elif verb == "get" and argv[2] == "ll/atcii-classifier-demo" and output.startswith("jsonpath="):
                assert out == "lifelong-dataset\n"
            elif verb == "get" and argv[2] == "ds" and output.startswith("jsonpath="):
                assert out == f"lifelong-dataset\t{NODE}\n"
            elif verb == "describe" and argv[2:] == ["ll", "atcii-classifier-demo"]:
                assert "Name:              atcii-classifier-demo" in out and "Conditions:" in out
                involved = out.split("Nodes Involved:")[1].splitlines()
                assert involved[1].split()[-1] == "OUTBOX@HELLO"
                assert involved[2].split()[0] == NODE and involved[2].split()[-1] == "2"
            elif verb == "describe" and argv[2:] == ["ds"]:
                assert [line.split()[1] for line in out.splitlines() if line.startswith("Name:")] == [
                    "lifelong-dataset"
                ]
                assert "Kind:              Dataset" in out and "Nodes Involved:" in out
            elif verb == "nodes":
                header, row = out.splitlines()[:2]
                assert header.split()[-1] == "OUTBOX@HELLO"
                assert row.split()[:2] == [NODE, "Online"] and row.split()[-1] == "2"
            elif verb == "delete" and "-f" in argv:
                assert out.splitlines() == ['lifelonglearningjob.sedna.io "atcii-classifier-demo" deleted']
            elif verb == "delete" and argv[2:] == ["ds", "--all"]:
                assert out.splitlines() == ['dataset.sedna.io "lifelong-dataset" deleted']
                assert gm.api("GET", "/api/v1/Dataset")["items"] == []
            else:
                pytest.fail(f"no check for the documented command {shlex.join(argv)}")
            seen.append(verb)
        assert {"apply", "get", "describe", "nodes", "delete"} <= set(seen)
    finally:
        gm.terminate()


def test_client_config_commands_in_the_docs_run_as_written(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    files = CLIENT_CONFIG.findall(text)
    assert len(files) == 1, "docs/operations.md must keep one <!-- client config file: ... --> yaml block"
    config = tmp_path / "config"
    config.write_text(files[0])
    documented = yaml.safe_load(files[0])
    tokens = [u["user"]["token"] for u in documented["users"] if "token" in u["user"]]
    assert tokens, "the documented file shows a user with a token (config view must redact it)"
    env = {**os.environ, "LIFELONG_CONFIG": str(config)}
    env.pop("LIFELONG_TOKEN", None)
    (block,) = marked_blocks("commands: client-config")
    commands = [shlex.split(line) for line in block.strip().splitlines()]
    current = documented["current-context"]
    seen = []
    for argv in commands:
        assert argv[:2] == ["lifelong", "config"], argv
        done = lifelong(argv, env)
        assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr}"
        assert not any(t in done.stdout + done.stderr for t in tokens)
        verb = argv[2]
        if verb == "view":
            shown = yaml.safe_load(done.stdout)
            assert shown["clusters"] == documented["clusters"]
            assert {u["name"]: u["user"] for u in shown["users"]} == {
                u["name"]: ({**u["user"], "token": "REDACTED"} if "token" in u["user"] else u["user"])
                for u in documented["users"]
            }
        elif verb == "get-contexts":
            rows = [line.split() for line in done.stdout.splitlines()[1:]]
            assert [r[1] if r[0] == "*" else r[0] for r in rows] == [
                c["name"] for c in documented["contexts"]
            ]
            assert [r[1] for r in rows if r[0] == "*"] == [current]
        elif verb == "use-context":
            current = argv[3]
            assert done.stdout == f'Switched to context "{current}".\n'
            assert yaml.safe_load(config.read_text())["current-context"] == current
        elif verb == "current-context":
            assert done.stdout == f"{current}\n"
        else:
            pytest.fail(f"no check for the documented command {shlex.join(argv)}")
        seen.append(verb)
    assert {"view", "use-context"} <= set(seen)


def test_help_commands_in_the_docs_run_as_written() -> None:
    commands = help_commands()
    assert ["lifelong", "gm", "--help"] in commands and ["lifelong", "demo", "--help"] in commands
    for argv in commands:
        done = lifelong(argv)
        assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr}"
        assert done.stdout.startswith("usage: lifelong"), done.stdout[:200]
    for verb in ("apply", "get", "describe", "delete", "nodes", "tail"):
        done = lifelong(["lifelong", verb, "--help"])
        assert done.returncode == 0 and done.stdout.startswith(f"usage: lifelong {verb}"), done.stderr


def marked_blocks(kind: str) -> list[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    return [body for marker, body in MARKED.findall(text) if marker == kind]


def test_every_command_block_in_operations_is_run_or_says_why_not() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    blocks = MARKED.findall(text)
    assert len(blocks) == text.count("```sh"), "a ```sh block MARKED does not see"
    for marker, body in blocks:
        assert marker in KINDS or (marker.startswith("not run: ") and len(marker) > 20), (
            f"mark this block with <!-- commands: KIND --> ({', '.join(KINDS)}) "
            f"or <!-- not run: WHY AND WHAT CHECKS IT -->:\n{body}"
        )
    assert {m for m, _ in blocks} >= set(KINDS)


def test_kubernetes_commands_in_the_docs_run_as_written(k8s: Cluster, tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian: apt-get install kubernetes-client)")
    for tool in ("openssl", "mosquitto_passwd"):
        if shutil.which(tool) is None and not Path("/usr/bin", tool).exists():
            pytest.skip(f"{tool} is not installed (Debian: openssl, mosquitto-clients)")
    (block,) = marked_blocks("commands: kubernetes")
    work = tmp_path / "work"
    work.mkdir()
    (work / "deploy").symlink_to(ROOT / "deploy")
    outputs: dict[str, str] = {}
    try:
        for line in block.strip().splitlines():
            if line.startswith("kubectl "):
                argv = [kubectl, "--kubeconfig", str(k8s.kubeconfig), *shlex.split(line)[1:], "-o", "json"]
                done = subprocess.run(
                    argv, cwd=work, capture_output=True, text=True, timeout=120, check=False
                )
            else:
                done = run_shell(line, cwd=work, timeout=120)
            assert done.returncode == 0, f"{line}: {done.stderr}"
            outputs[line] = done.stdout
        # Stored, as a cluster would run them: the GM's Deployment with its ServiceAccount.
        stored = client.AppsV1Api(k8s.admin()).read_namespaced_deployment("lifelong-gm", SHIPPED_NAMESPACE)
        assert stored.spec.template.spec.service_account_name == "lifelong-gm"
    finally:
        k8s.delete_namespace(SHIPPED_NAMESPACE, wait=True)

    # The users and the certificate are what the broker and the edges need.
    users = [row.split(":")[0] for row in (work / "passwd").read_text().splitlines()]
    assert users == ["gm", "edge-1"]
    verify = run_shell("openssl verify -CAfile ca.crt server.crt", cwd=work)
    assert verify.returncode == 0 and "server.crt: OK" in verify.stdout, verify.stderr
    san = run_shell("openssl x509 -in server.crt -noout -ext subjectAltName", cwd=work)
    assert "DNS:broker.example.com" in san.stdout, san.stdout + san.stderr
    # The Secrets carry those files under the keys the manifests mount.
    secrets = {}
    for line, out in outputs.items():
        if " secret " in line:
            doc = json.loads(out)
            secrets[doc["metadata"]["name"]] = (doc["metadata"]["namespace"], sorted(doc["data"]))
    assert secrets == {
        "lifelong-mosquitto-passwd": ("lifelong", ["passwd"]),
        "lifelong-gm-mqtt": ("lifelong", ["password"]),
        "lifelong-mosquitto-tls": ("lifelong", ["tls.crt", "tls.key"]),
        "lifelong-kb-tokens": ("lifelong", ["gm-token", "tokens.csv"]),
    }
    token = (work / "gm-kb-token").read_text().strip()
    assert (work / "kb-tokens.csv").read_text() == f"{token},write,gm\n"  # the KB knows the GM's token
    (applied,) = [out for line, out in outputs.items() if line.startswith("kubectl apply")]
    items = json.loads(applied)["items"]
    services = {i["metadata"]["name"]: i["spec"] for i in items if i["kind"] == "Service"}
    assert services["mosquitto-edge"]["type"] == "LoadBalancer"
    gm = next(i for i in items if i["kind"] == "Deployment" and i["metadata"]["name"] == "lifelong-gm")
    assert gm["spec"]["template"]["spec"]["containers"][0]["image"] == "lifelong:0.1.0"


@pytest.mark.slow
def test_edge_install_commands_in_the_docs_put_lifelong_where_the_unit_runs_it(tmp_path: Path) -> None:
    (block,) = marked_blocks("commands: edge-install")
    prefix = tmp_path / "opt" / "lifelong"
    checkout = copy_build_context(tmp_path / "checkout")
    script = block.replace("/opt/lifelong", str(prefix))
    done = run_shell(script, cwd=checkout, timeout=900, wheels=wheelhouse())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.startswith("usage: lifelong lc") or "usage: lifelong lc" in done.stdout

    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    text = (ROOT / "deploy" / "systemd" / "lifelong-lc.service").read_text()
    assert "\nExecStart=/opt/lifelong/bin/lifelong lc\n" in text
    unit = tmp_path / "lifelong-lc.service"
    unit.write_text(text.replace("/opt/lifelong", str(prefix)))
    out = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr
