"""``lifelong logs`` with real processes: a broker (both kinds), ``lifelong gm`` and ``lifelong lc``.

A job's Train worker (a Python script written here) prints numbered lines and waits at a gate.
``lifelong logs`` fetches its log from the LC through the GM and the bus: the whole log,
``--tail``, ``-f`` seeing a line written later and ending when the worker ends; an unknown
worker is a clear error; so is a node whose LC is down, within the request deadline. The block
``<!-- commands: logs -->`` of docs/operations.md is run as written.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import lc_objects
from harness.brokers import Broker
from harness.processes import GMProcess, LCProcess
from harness.waiting import wait_for

NODE = "edge-node"
JOB = "atcii-classifier-demo"
WORKER = f"{JOB}-train-1"
ROOT = Path(__file__).resolve().parents[2]
DOCS_BLOCK = re.compile(r"<!-- commands: logs -->\s*```sh\n(.*?)```", re.S)

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path

    stage, gate = sys.argv[1], Path(sys.argv[2])
    if stage != "train":
        sys.exit(0)
    for i in range(1, 6):
        print(f"line {i}", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 120
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    print("after the gate", flush=True)
    """
)
BEFORE_GATE = "".join(f"line {i}\n" for i in range(1, 6)) + "to stderr\n"


class Setup:
    def __init__(self, tmp: Path, broker: Broker) -> None:
        self.tmp = tmp
        self.script = tmp / "worker.py"
        self.script.write_text(SCRIPT)
        self.gate = tmp / "gate"
        self.data = tmp / "samples.txt"
        self.data.write_text("".join(f"sample {i}\n" for i in range(10)))
        self.gm = GMProcess(tmp, broker_url=broker.url, prefix=broker.prefix)
        self.lc = LCProcess(tmp, node=NODE, broker_url=broker.url, prefix=broker.prefix)

    def template(self, stage: str) -> dict[str, Any]:
        command = [sys.executable, str(self.script), stage, str(self.gate)]
        return {
            "spec": {"nodeName": NODE, "containers": [{"name": stage, "image": "py", "command": command}]}
        }

    def apply(self) -> None:
        job = lc_objects.job(JOB, NODE, "ds1", self.tmp / "out", conditions=[])
        del job["status"]
        for stage in ("train", "eval", "deploy"):
            job["spec"][f"{stage}Spec"]["template"] = self.template(stage)
        self.gm.apply([lc_objects.dataset("ds1", NODE, self.data), job])  # not a client process

    def logs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.gm.cli("logs", *args, check=False)

    def wait_log(self, text: str) -> None:
        """Wait until the worker's log holds ``text``.

        The wait asks the GM's API what ``lifelong logs`` asks it (``GET
        /api/v1/Worker/NS/NAME/log``), from this process: a ``lifelong logs`` per poll started a
        client process (about 0.6 s of CPU) each time. What ``lifelong logs`` prints is checked
        by the tests themselves."""

        def shown() -> bool:
            self.gm.check_alive()
            self.lc.check_alive()
            try:
                answer = self.gm.api("GET", f"/api/v1/Worker/default/{WORKER}/log?timeout=5")
            except OSError:  # 404 until the worker has started; as a failed client call: not yet
                return False
            return text in answer["data"]

        wait_for(
            shown,
            timeout=60,
            interval=0.2,
            what=f"{text!r} in the log\nGM:\n{self.gm.log_tail()}\nLC:\n{self.lc.log_tail()}",
        )


@pytest.fixture
def setup(tmp_path: Path, broker: Broker) -> Iterator[Setup]:
    s = Setup(tmp_path, broker)
    s.gm.start()
    s.gm.wait_ready()
    s.lc.start()
    s.lc.wait_online(s.gm)
    try:
        yield s
    finally:
        for proc in (s.lc, s.gm):
            if proc.alive():
                proc.kill()


def test_logs_tail_follow_and_offline_node(setup: Setup) -> None:
    setup.apply()
    setup.wait_log("to stderr")
    whole = setup.logs(WORKER)
    assert (whole.returncode, whole.stdout) == (0, BEFORE_GATE), whole.stderr

    tail = setup.logs(WORKER, "--tail", "2")
    assert (tail.returncode, tail.stdout) == (0, "line 5\nto stderr\n"), tail.stderr

    unknown = setup.logs("no-such-job-train-1")
    assert unknown.returncode == 1 and 'worker "no-such-job-train-1" not found' in unknown.stderr
    assert "Traceback" not in unknown.stderr

    follow = subprocess.Popen(
        [sys.executable, "-m", "lifelong", "logs", "-f", WORKER, "--server", setup.gm.server],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(follow.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: "to stderr\n" in lines, timeout=30, what="the follower to print the log so far")
        setup.gate.write_text("go")  # the worker prints one more line and ends: so does the follower
        follow.wait(timeout=60)
        reader.join(10)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0, follow.stderr.read() if follow.stderr else ""
    assert "".join(lines) == BEFORE_GATE + "after the gate\n"

    setup.lc.kill()  # the node's LC is down: nobody answers
    # The GM gave up after the 2 s asked for (its message names it) and the CLI ended: no timing
    # assertion, which a loaded machine broke (the CLI's own start-up dominates the time).
    offline = setup.logs(WORKER, "--request-timeout", "2")
    assert offline.returncode == 1, offline.stdout
    assert (
        f"node {NODE} did not answer the log request for worker default/{WORKER} within 2s" in offline.stderr
    )
    assert "Traceback" not in offline.stderr


def test_the_documented_logs_commands_run_as_written(setup: Setup) -> None:
    found = DOCS_BLOCK.findall((ROOT / "docs" / "operations.md").read_text())
    assert len(found) == 1, "docs/operations.md must keep one <!-- commands: logs --> block"
    commands = [shlex.split(line) for line in found[0].strip().splitlines()]
    assert commands and all(argv[:2] == ["lifelong", "logs"] for argv in commands), commands
    setup.apply()
    setup.wait_log("to stderr")
    setup.gate.write_text("go")
    setup.wait_log("after the gate")
    for argv in commands:
        done = setup.gm.cli(*argv[1:])
        assert done.stdout.endswith("after the gate\n"), (argv, done.stdout)
