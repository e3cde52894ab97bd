"""The LC loses nothing when it, or the broker, dies: real ``lifelong lc`` processes, real
brokers, the GM played by the test with plain paho + the codec (docs/protocol.md only).

* 5,000 queued reports, the LC SIGKILLed while draining them and restarted: the GM side
  receives every sequence number and applies each once (dedupe by (epoch, seq)).
* the broker stopped while reports pile up, then started again: they drain, none lost.
* an LC SIGKILLed in the middle of a round resumes that round: no second Train/ready for
  it, Eval and Deploy of the same round, and the next round counts only new samples.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.brokers import Broker
from harness.lc_gm import FakeGM, LCProcess
from harness.lc_objects import NS, StateReader, cond, dataset, job
from harness.waiting import wait_for

from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox

NODE = "node-a"
QUEUED = 5000


@pytest.fixture
def gm(broker: Broker, prefix: str) -> Iterator[FakeGM]:
    g = FakeGM(broker.host, broker.port, prefix, NODE)
    yield g
    g.close()


def _lc(broker: Broker, prefix: str, tmp_path: Path, *extra: str) -> LCProcess:
    return LCProcess(
        node=NODE, broker_url=broker.url, prefix=prefix, state_dir=tmp_path / "state", extra=list(extra)
    )


def test_5000_queued_reports_survive_sigkill(broker: Broker, prefix: str, tmp_path: Path, gm: FakeGM) -> None:
    # Queue the reports with the LC's own outbox code, as an LC cut off from its broker would.
    store = Store(tmp_path / "state" / "lc.db")
    outbox = Outbox(store)
    with store.tx():
        for i in range(QUEUED):
            outbox.append(
                "LifelongLearningJob", NS, f"job{i % 7}", {"event": "workerInfo", "worker": "w", "info": i}
            )
    epoch = store.epoch
    store.close()

    lc = _lc(broker, prefix, tmp_path)
    lc.start()
    try:
        lc.wait_started(gm, 0)
        assert gm.rx.hellos[-1].body["outbox"] == {"depth": QUEUED, "lowSeq": 1, "nextSeq": QUEUED + 1}
        wait_for(lambda: len(gm.applied) >= QUEUED // 5, timeout=60, what="a fifth of the reports")
        lc.kill()  # SIGKILL in the middle of the drain
        partial = len(gm.applied)
        assert partial < QUEUED, "the drain finished before the kill; the test proves nothing"
        hellos = gm.hello_count()
        lc.start()
        lc.wait_started(gm, hellos)
        wait_for(lambda: len(gm.applied) >= QUEUED, timeout=90, what="every report after the restart")
        state = StateReader(lc.state_dir)
        wait_for(lambda: state.outbox_depth() == 0, timeout=30, what="the outbox to empty")
    finally:
        lc.kill()
    assert {e for e, _ in gm.applied} == {epoch}
    assert sorted(seq for _, seq in gm.applied) == list(range(1, QUEUED + 1))
    infos = sorted(env.body["info"] for env in gm.applied.values())
    assert infos == list(range(QUEUED))
    # Only unacknowledged reports come again: at most the in-flight window plus acks that were
    # on their way when the LC died.
    assert gm.duplicates <= 2 * 200 + 100, gm.duplicates


def _post(port: int, worker: str, body: dict[str, object]) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/sedna/workers/{worker}/info",
        data=json.dumps(body).encode(),
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def test_broker_outage_reports_drain(broker: Broker, prefix: str, tmp_path: Path, gm: FakeGM) -> None:
    lc = _lc(broker, prefix, tmp_path, "--ack-timeout-seconds", "2")
    lc.start()
    try:
        lc.wait_started(gm, 0)
        data = tmp_path / "d.txt"
        data.write_text("a\nb\n")
        gm.upsert(dataset("ds", NODE, data))
        gm.upsert(
            job("j", NODE, "ds", tmp_path / "out", [cond("Train", "Waiting")], threshold=1000, check_period=1)
        )
        wait_for(lambda: gm.reports("Dataset"), what="first dataset count")

        broker.stop()
        posted = 40
        for i in range(posted):
            _post(lc.api_port, "j-train-1", {"name": "j-train-1", "namespace": NS, "ownerName": "j", "n": i})
        data.write_text("a\nb\nc\nd\ne\n")
        state = StateReader(lc.state_dir)
        wait_for(lambda: state.outbox_depth() >= posted + 1, what="reports queued while the broker is down")
        broker.start()
        # Both sides reconnect by themselves; whatever the LC sent before the GM side had
        # subscribed again is resent after the ack timeout (2 s here).
        wait_for(lambda: len(gm.job_events("workerInfo")) == posted, timeout=60, what="worker reports")
        counts = wait_for(
            lambda: gm.reports("Dataset", lambda e: e.body["numberOfSamples"] == 5),
            timeout=30,
            what="new count",
        )
        assert counts
        wait_for(lambda: state.outbox_depth() == 0, timeout=30, what="the outbox to empty")
    finally:
        lc.kill()
    assert sorted(e.body["info"]["n"] for e in gm.job_events("workerInfo")) == list(range(posted))


def test_lc_killed_mid_round_resumes_it(broker: Broker, prefix: str, tmp_path: Path, gm: FakeGM) -> None:
    data = tmp_path / "d.csv"
    data.write_text("path,label\n" + "".join(f"x{i},{i % 2}\n" for i in range(10)))
    out = tmp_path / "out"
    model = tmp_path / "model.pkl"
    model.write_bytes(b"trained")
    lc = _lc(broker, prefix, tmp_path)
    lc.start()
    try:
        lc.wait_started(gm, 0)
        gm.upsert(dataset("ds", NODE, data, fmt="csv"))
        gm.upsert(job("j", NODE, "ds", out, [cond("Train", "Waiting")], check_period=1))
        ready = wait_for(lambda: gm.job_events("ready", "Train"), what="Train ready for round 1")
        assert ready[0].body["round"] == 1 and ready[0].body["data"]["numberOfSamples"] == 10

        lc.kill()  # mid-round: the GM has not moved the job yet
        with data.open("a") as fh:  # 3 new samples: below the trigger's threshold of 5
            fh.write("".join(f"y{i},1\n" for i in range(3)))
        hellos = gm.hello_count()
        lc.start()
        lc.wait_started(gm, hellos)
        held = {(r["kind"], r["name"]): r["rv"] for r in gm.rx.hellos[-1].body["resources"]}
        assert ("LifelongLearningJob", "j") in held and ("Dataset", "ds") in held

        # The GM applies round 1's ready and the worker completes: the LC goes on with round 1.
        models = {"models": [{"format": "pkl", "url": str(model), "metrics": {"acc": 0.9}}]}
        history = [cond("Train", "Waiting"), cond("Train", "Ready"), cond("Train", "Starting")]
        history += [cond("Train", "Completed", {"output": models}), cond("Eval", "Waiting")]
        gm.upsert(job("j", NODE, "ds", out, history, check_period=1))
        ev = wait_for(lambda: gm.job_events("ready", "Eval"), what="Eval ready")
        assert ev[0].body["round"] == 1 and ev[0].body["data"]["models"] == models["models"]

        history += [
            cond("Eval", "Ready"),
            cond("Eval", "Completed", {"output": models}),
            cond("Deploy", "Waiting"),
        ]
        gm.upsert(job("j", NODE, "ds", out, history, check_period=1))
        dep = wait_for(lambda: gm.job_events("ready", "Deploy"), what="Deploy ready")
        deployed = Path(dep[0].body["data"]["model"]["url"])
        assert dep[0].body["round"] == 1 and deployed == out / "deploy" / "model.pkl"
        assert deployed.read_bytes() == b"trained"

        # Next round: only samples after round 1's cursor count (3 so far, then 3 more = 6 > 5).
        history += [cond("Deploy", "Ready"), cond("Deploy", "Completed"), cond("Train", "Waiting")]
        gm.upsert(job("j", NODE, "ds", out, history, check_period=1))
        with data.open("a") as fh:
            fh.write("".join(f"z{i},0\n" for i in range(3)))
        rounds = wait_for(
            lambda: len(gm.job_events("ready", "Train")) >= 2 and gm.job_events("ready", "Train")
        )
    finally:
        lc.kill()
    trains = sorted(rounds, key=lambda e: e.seq or 0)
    assert [e.body["round"] for e in trains] == [1, 2], "round 1 was reported twice or skipped"
    assert trains[1].body["data"]["numberOfSamples"] == 6
    train2 = Path(trains[1].body["data"]["trainDataURL"])
    eval2 = Path(trains[1].body["data"]["evalDataURL"])
    rows = train2.read_text().splitlines()[1:] + eval2.read_text().splitlines()[1:]
    assert train2.read_text().startswith("path,label\n")
    assert sorted(rows) == sorted(data.read_text().splitlines()[1:])  # every sample once, all rounds
