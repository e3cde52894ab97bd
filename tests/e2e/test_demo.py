"""End to end: ``lifelong demo`` as a new user runs it (``make demo`` runs the same command).

The demo starts the embedded broker, a GM, an LC and the inference service as real processes,
and real workers (``examples/demo``) train, evaluate and deploy scikit-learn models on the
bundled digits. Checked: exit status 0, the summary table of both rounds, the shift between
phases visible in the scores, and no process of the demo left behind afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness.waiting import wait_for

pytestmark = pytest.mark.e2e


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def demo_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_")}


def test_demo_runs_two_rounds_and_prints_the_summary(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    out = subprocess.run(
        [sys.executable, "-m", "lifelong", "demo", "--rounds", "2", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        env=demo_env(),
    )
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    lines = out.stdout.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("Summary: 2 rounds")))
    header, round1, round2 = (lines[start + i].split() for i in (1, 2, 3))
    assert header == [
        "ROUND",
        "PHASE",
        "NEW",
        "SAMPLES",
        "TRAINED",
        "ON",
        "NEW",
        "MODEL",
        "DEPLOYED",
        "MODEL",
        "DEPLOYED",
    ]
    assert round1[0] == "1" and round1[-1] == "yes" and round1[-2] == "-"  # nothing was deployed before
    assert round2[0] == "2"
    # the round-1 model saw only the digits 0-4: on the shifted data the new model is better
    new2, deployed2 = float(round2[-3]), float(round2[-2])
    assert new2 > deployed2 and round2[-1] == "yes"
    assert "inference service now serves the model of round 2" in out.stdout
    for stage in ("Train", "Eval", "Deploy"):
        assert f"round 2: {stage}/Completed" in out.stdout
    assert not processes_mentioning(str(workdir)), "the demo left processes behind"


def test_demo_interrupted_stops_every_child(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lifelong", "demo", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=demo_env(),
    )
    try:
        # wait until the LC runs (its database exists), then Ctrl-C
        wait_for((workdir / "lc" / "lc.db").exists, timeout=90, what="the demo's LC to start")
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, stdout
    assert "interrupted; stopping the demo's processes" in stdout
    wait_for(lambda: not processes_mentioning(str(workdir)), timeout=15, what="no process of the demo left")
