"""End to end: ``lifelong demo`` as a new user runs it (``make demo`` runs the same command).

The default scenario starts the embedded broker, a GM with the knowledge base in its process and
an LC as real processes; the workers of ``examples/lifelong`` (the library) learn the digits of
two cameras, the edge's inference meets a third camera no model has seen, the demo labels its
samples with ``lifelong kb label`` and round 2 learns it. The test runs it with
``--keep-running`` (the same run, which then waits for Ctrl-C) so that what the demo printed can
be checked against the GM's API and the KB's native API while they still run: the unseen task
found, labelled and learned from the closest known task, the table of accuracy per task per
round, and the web console's address it printed (docs/console.md). ``--scenario digits`` (the
shifting-digits loop) still runs; Ctrl-C stops every child.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

JOB = "lifelong-digits"


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


def stop_demo(proc: subprocess.Popen[str], workdir: Path) -> None:
    """After a failed check (the demo still runs), stop it as a user would (Ctrl-C: it stops
    its children), and kill what is left of it: a SIGKILL of the demo alone would leave its
    broker, GM and LC running."""
    if proc.poll() is not None:
        return  # it ended by itself: whether it left anything running is for the test to check
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    for pid in processes_mentioning(str(workdir)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def demo_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_")}


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


class Output:
    """A child's stdout, read line by line in a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def test_the_default_demo_finds_labels_and_learns_an_unseen_task(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lifelong", "demo", "--keep-running", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=demo_env(),
    )
    out = Output(proc)
    try:
        wait_for(
            lambda: "--keep-running:" in out.text or proc.poll() is not None,
            timeout=300,
            what="the demo's summary",
        )
        assert proc.poll() is None, out.text
        text = out.text
        gm = re.search(r"gm +(http://127\.0\.0\.1:\d+)", text)
        kb = re.search(r"kb +(http://127\.0\.0\.1:\d+/knowledgebase/v1)", text)
        assert gm and kb, text
        base = f"{kb.group(1)}/%s/default/{JOB}"

        # The web console: its address printed once the GM was up, again with --keep-running, and
        # it answers after the last round (the demo's GM takes no token: no login page).
        console = re.search(r"console: (http://127\.0\.0\.1:\d+/ui/)", text)
        assert console and console.group(1) == f"{gm.group(1)}/ui/", text
        assert re.search(rf"--keep-running:.* {re.escape(console.group(1))} ", text), text
        with urllib.request.urlopen(console.group(1), timeout=10) as resp:  # 303 to /ui/jobs
            page = resp.read().decode()
            assert resp.status == 200 and resp.url == f"{gm.group(1)}/ui/jobs", resp.url
        assert 'data-page="jobs"' in page and f'data-job="default/{JOB}"' in page, page

        # The GM: two rounds went through train, eval and deploy.
        job = get(f"{gm.group(1)}/api/v1/LifelongLearningJob/default/{JOB}")
        done = [c for c in job["status"]["conditions"] if (c["stage"], c["type"]) == ("Deploy", "Completed")]
        assert len(done) == 2, job["status"]["conditions"]
        for rnd in (1, 2):
            for stage in ("Train", "Eval", "Deploy"):
                assert re.search(rf"round {rnd} +{stage} +Completed", text), text

        # The KB: round 1's inference found cam_c's 100 samples, which were labelled and delivered.
        samples = get(base % "samples" + "?state=all")["items"]
        assert len(samples) == 100 and {s["attrs"]["domain"] for s in samples} == {"cam_c"}
        assert {s["state"] for s in samples} == {"delivered"}
        assert "KB unseen samples: 100 (100 unlabelled); by camera: cam_c 100" in text, text
        assert "labelled 100 samples of job default/lifelong-digits" in text, text
        assert "lifelong kb label lifelong-digits --file labels.csv" in text, text
        assert "0 found after that" in text, text

        # The KB: round 2 learned cam-c starting from cam-b's model, as the demo said.
        groups = {g["entry"]: g for g in get(base % "tasks")["taskGroups"]}
        assert sorted(groups) == ["cam-a", "cam-b", "cam-c"]
        transfer = groups["cam-c"]["transfer"]
        assert transfer["from"] == "cam-b"
        assert (
            f"KB task cam-c: a model of {groups['cam-c']['sampleNum']} samples stored" in text
            and f"learned starting from cam-b's model, the closest known task (it scored "
            f"{transfer['ratio']:.3f}"
            in text
        ), text

        # The table: one row per round, one column per task, the KB's test accuracies.
        scores = get(base % "metrics")["scores"]
        r = {rnd: {t: scores[rnd][t]["eval"]["test_accuracy"] for t in groups} for rnd in ("1", "2")}
        lines = out.lines
        start = next(i for i, line in enumerate(lines) if line.startswith("Summary: 2 rounds"))
        assert lines[start + 1].split() == ["cam-a", "cam-b", "cam-c", "average"], text
        for offset, rnd in ((2, "1"), (3, "2")):
            cells = lines[start + offset].split()
            assert cells[:2] == ["round", rnd], text
            assert cells[2:5] == [f"{r[rnd][t]:.3f}" for t in ("cam-a", "cam-b", "cam-c")], (rnd, text)
        assert "round 1 cam-c: not learned yet, its samples were unseen" in text, text
        # learning cam_c made it better than the closest known model served it before
        assert r["2"]["cam-c"] > r["1"]["cam-c"], r

        # The metrics, from the same matrix: average accuracy and BWT over cam-a and cam-b, FWT
        # against the baseline the demo printed.
        def metric(name: str) -> float:
            found = re.search(rf"^  {name} +([-+]?\d\.\d{{3}})", text, re.M)
            assert found, (name, text)
            return float(found.group(1))

        assert metric("average accuracy") == pytest.approx(sum(r["2"].values()) / 3, abs=6e-4)
        bwt = sum(r["2"][t] - r["1"][t] for t in ("cam-a", "cam-b")) / 2
        assert metric("BWT") == pytest.approx(bwt, abs=6e-4)
        base_line = re.search(
            r"cam-c: learned in round 2 from cam-b's model: [\d.]+; .*: ([\d.]+)$", text, re.M
        )
        assert base_line, text
        assert metric("FWT") == pytest.approx(r["2"]["cam-c"] - float(base_line.group(1)), abs=1.1e-3)
        assert metric("samples transfer") == pytest.approx(100 / 280, abs=6e-4)

        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        out.thread.join(10)
    finally:
        stop_demo(proc, workdir)
    assert proc.returncode == 0, out.text
    wait_for(lambda: not processes_mentioning(str(workdir)), timeout=15, what="no process of the demo left")


def test_the_digits_scenario_runs_two_rounds_and_prints_the_summary(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lifelong",
            "demo",
            "--scenario",
            "digits",
            "--rounds",
            "2",
            "--workdir",
            str(workdir),
        ],
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


def test_the_demo_interrupted_stops_every_child(tmp_path: Path) -> None:
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
        stop_demo(proc, workdir)
    assert proc.returncode == 130, stdout
    assert "interrupted; stopping the demo's processes" in stdout
    wait_for(lambda: not processes_mentioning(str(workdir)), timeout=15, what="no process of the demo left")


def test_help_lists_both_scenarios_and_rounds_belongs_to_digits(tmp_path: Path) -> None:
    usage = subprocess.run(
        [sys.executable, "-m", "lifelong", "demo", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--scenario {digits,lifelong}" in usage, usage
    out = subprocess.run(
        [sys.executable, "-m", "lifelong", "demo", "--rounds", "3", "--workdir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=demo_env(),
    )
    assert out.returncode == 2 and "--rounds is for --scenario digits" in out.stderr, out.stderr
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
