"""Worker runtime of the real ``lifelong lc`` (standalone mode), GM played by the test:
phases with exit codes, the models a worker posted in its Succeeded report, and a worker
that outlives an LC SIGKILL is adopted (not started twice) and reported when it ends.
Also scrapes the LC's Prometheus metrics once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.brokers import Broker
from harness.lc_gm import FakeGM, LCProcess
from harness.lc_objects import StateReader, cond, dataset, job, worker
from harness.waiting import wait_for

NODE = "node-a"

WORKER = """
import json, os, pathlib, sys, time, urllib.request
gate = pathlib.Path(sys.argv[1])
name = os.environ["WORKER_NAME"]
model = {"format": "pkl", "url": "/models/m.pkl", "metrics": {"acc": 0.9}}
body = {"name": name, "namespace": os.environ["NAMESPACE"], "ownerName": "j",
        "status": "completed", "results": [model]}
url = os.environ["LC_SERVER"] + "/sedna/workers/" + name + "/info"
req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
urllib.request.urlopen(req, timeout=10).read()
while not gate.exists():
    time.sleep(0.05)
sys.exit(int(gate.read_text() or 0))
"""


@pytest.fixture
def gm(broker: Broker, prefix: str) -> Iterator[FakeGM]:
    g = FakeGM(broker.host, broker.port, prefix, NODE)
    yield g
    g.close()


def _worker(name_round: int, gate: Path) -> dict:
    w = worker("j", "Train", name_round, WORKER)
    w["spec"]["template"]["spec"]["containers"][0]["args"] = [WORKER, str(gate)]
    return w


def _phase(gm: FakeGM, name: str, phase: str) -> list:
    return gm.reports("Worker", lambda e: e.name == name and e.body["phase"] == phase)


def test_worker_phases_and_adoption_after_sigkill(
    broker: Broker, prefix: str, tmp_path: Path, gm: FakeGM
) -> None:
    lc = LCProcess(
        node=NODE, broker_url=broker.url, prefix=prefix, state_dir=tmp_path / "state", metrics=True
    )
    lc.start()
    state = StateReader(lc.state_dir)
    try:
        lc.wait_started(gm, 0)
        gm.upsert(dataset("ds", NODE, tmp_path / "d.txt"))
        gm.upsert(
            job(
                "j",
                NODE,
                "ds",
                tmp_path / "out",
                [cond("Train", "Waiting"), cond("Train", "Ready")],
                check_period=1,
            )
        )
        ok_gate, bad_gate = tmp_path / "ok", tmp_path / "bad"
        gm.upsert(_worker(1, ok_gate))
        gm.upsert(_worker(2, bad_gate))
        wait_for(
            lambda: _phase(gm, "j-train-1", "Running") and _phase(gm, "j-train-2", "Running"), what="Running"
        )
        wait_for(lambda: len(gm.job_events("workerInfo")) == 2, what="both workers' info posts")
        pid = state.record("workers", "j-train-1")["pid"]

        text = lc.metrics()
        assert 'lifelong_lc_workers{phase="Running"} 2.0' in text
        assert "lifelong_lc_outbox_depth" in text and 'lifelong_lc_reports_total{result="acked"}' in text

        bad_gate.write_text("3")
        failed = wait_for(lambda: _phase(gm, "j-train-2", "Failed"), what="Failed report")
        assert failed[0].body["exitCode"] == 3

        lc.kill()  # the LC dies; its workers do not
        hellos = gm.hello_count()
        lc.start()
        lc.wait_started(gm, hellos)
        assert state.record("workers", "j-train-1")["pid"] == pid  # adopted, not started again
        ok_gate.write_text("0")
        done = wait_for(lambda: _phase(gm, "j-train-1", "Succeeded"), timeout=20, what="Succeeded report")
    finally:
        lc.kill()
    body = done[0].body
    assert body["exitCode"] == 0 and body["round"] == 1 and body["job"] == "j"
    assert body["output"]["models"] == [{"format": "pkl", "url": "/models/m.pkl", "metrics": {"acc": 0.9}}]
    assert len(_phase(gm, "j-train-1", "Running")) == 1
