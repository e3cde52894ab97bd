"""The ``mosquitto_pub``/``mosquitto_sub`` examples of ``docs/protocol.md`` run as written.

Each fenced ``sh`` block after a ``<!-- example: NAME -->`` marker is one command; this test
runs them, in the order the document tells a person to, against a real broker and a real GM
started with ``--codec json`` (only ``-p 1883`` becomes the test broker's port), and checks
what the document says they print. A marker that disappears, or a command that stops
working, fails the test.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from harness.brokers import Broker
from harness.processes import GMProcess
from harness.waiting import wait_for

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\s*```sh\n(.*?)```", re.S)

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None or shutil.which("mosquitto_sub") is None,
    reason="mosquitto-clients (mosquitto_pub, mosquitto_sub) are not installed",
)


def examples() -> dict[str, list[str]]:
    found = {name: body.strip() for name, body in EXAMPLE.findall(DOC.read_text())}
    assert set(found) == {"gm-presence", "watch-down", "hello", "report"}, sorted(found)
    out = {}
    for name, command in found.items():
        assert "\n" not in command, f"example {name} must be one command"
        argv = shlex.split(command)
        assert argv[0] in ("mosquitto_pub", "mosquitto_sub"), argv
        out[name] = argv
    return out


def on_port(argv: list[str], port: int) -> list[str]:
    i = argv.index("-p")
    assert argv[i + 1] == "1883", "the documented port is 1883"
    return [*argv[: i + 1], str(port), *argv[i + 2 :]]


def test_protocol_examples_run_as_written(broker: Broker, tmp_path: Path) -> None:
    cmds = {name: on_port(argv, broker.port) for name, argv in examples().items()}
    gm = GMProcess(tmp_path, broker_url=broker.url, prefix="lifelong/v1", extra=["--codec", "json"])
    gm.start()
    try:
        gm.wait_ready()

        presence = subprocess.run(
            cmds["gm-presence"], capture_output=True, text=True, timeout=30, check=False
        )
        assert presence.returncode == 0, presence.stderr
        env = json.loads(presence.stdout)
        assert env["op"] == "presence" and env["node"] == "gm" and env["body"]["state"] == "online"

        watch = subprocess.Popen(
            cmds["watch-down"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        lines: list[str] = []
        got_line = threading.Event()

        def read() -> None:
            assert watch.stdout is not None
            for line in watch.stdout:
                lines.append(line.rstrip("\n"))
                got_line.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            # mosquitto_sub says nothing once its subscription is in place: say hello (as an LC
            # does on every reconnect) until the GM's sync shows up there, then stop.
            def synced() -> bool:
                if got_line.is_set():
                    return True
                sent = subprocess.run(cmds["hello"], capture_output=True, text=True, timeout=30, check=False)
                assert sent.returncode == 0, sent.stderr
                return False

            wait_for(synced, timeout=30, interval=1.0, what="the GM's sync for edge-x")
            sent = subprocess.run(cmds["report"], capture_output=True, text=True, timeout=30, check=False)
            assert sent.returncode == 0, sent.stderr
            watch.wait(60)
            reader.join(10)
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait(10)
        assert watch.returncode == 0, watch.stderr.read() if watch.stderr else ""
        assert len(lines) == 2, lines
        answers = [(line.split(" ", 1)[0], json.loads(line.split(" ", 1)[1])) for line in lines]
        assert answers[0][0] == "lifelong/v1/node/edge-x/down/_ctl"
        assert answers[0][1]["op"] == "sync" and answers[0][1]["body"] == {"resources": []}
        assert answers[1][0] == "lifelong/v1/node/edge-x/down/_ctl"
        assert answers[1][1]["op"] == "ack" and answers[1][1]["body"] == {"epoch": "epoch-1", "seqs": [1]}
        nodes = gm.cli("nodes").stdout
        assert nodes.splitlines()[1].split()[:2] == ["edge-x", "Online"]
    finally:
        gm.kill()
