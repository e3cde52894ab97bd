"""The ``lifelong`` client commands shown in the docs run as written.

The block marked ``<!-- commands: client -->`` in ``docs/operations.md`` is run line by line,
in order, against a real broker and a real ``lifelong gm`` (only ``--server URL`` is added, for
the GM's test port), after an edge node ``edge-node`` has said hello the way an LC does. The
``lifelong ... --help`` commands the README and docs mention run too. Server commands
(``lifelong gm``/``lc``/``broker``) are only started the way the harness starts them.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from harness.brokers import Broker, make_broker
from harness.processes import GMProcess
from harness.waiting import wait_for
from paho.mqtt.enums import CallbackAPIVersion

from lifelong.common.codec import encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.topics import Topics

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- commands: client -->\s*```sh\n(.*?)```", re.S)
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


def lifelong(argv: list[str]) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "lifelong"
    return subprocess.run(
        [sys.executable, "-m", "lifelong", *argv[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
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
