"""The real ``lifelong lc`` against a real broker, with the GM played by the test (plain paho +
the codec, docs/protocol.md only): a job is received and acted on, a stale resourceVersion is
ignored but acknowledged, a delete stops everything for the job, a worker report posted
before its job arrives is delivered once the job arrives, and an invalid object published raw on
the node's down topic is refused and counted while a good one on the same node converges. Every test
also runs on the two-node RabbitMQ cluster, the GM on one node and the LC on the other."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.brokers import Broker
from harness.lc_gm import FakeGM, LCProcess
from harness.lc_objects import NS, StateReader, cond, dataset, job, worker
from harness.rabbitmq import lc_password_args
from harness.waiting import wait_for

from lifelong.edge.workers import proc_start_time

NODE = "node-a"


@pytest.fixture
def gm(broker: Broker, prefix: str) -> Iterator[FakeGM]:
    g = FakeGM(broker.host, broker.port, prefix, NODE)
    yield g
    g.close()


@pytest.fixture
def lc(broker: Broker, prefix: str, tmp_path: Path, gm: FakeGM) -> Iterator[LCProcess]:
    p = LCProcess(
        node=NODE,
        broker_url=broker.edge_url,
        prefix=prefix,
        state_dir=tmp_path / "state",
        metrics=True,
        extra=lc_password_args(broker, NODE, tmp_path),
    )
    p.start()
    try:
        p.wait_started(gm, 0)
        yield p
    finally:
        if p.alive():
            p.kill()


def _post_info(port: int, worker_name: str, body: dict[str, object]) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/sedna/workers/{worker_name}/info",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)


@pytest.mark.clustered
def test_job_acted_on_stale_ignored_delete_stops_everything(
    gm: FakeGM, lc: LCProcess, tmp_path: Path
) -> None:
    state = StateReader(lc.state_dir)
    hello = gm.rx.hellos[0].body or {}
    assert hello["agent"].startswith("lifelong-lc/") and hello["epoch"] and hello["resources"] == []
    assert hello["outbox"]["depth"] == 0
    presence = wait_for(lambda: gm.rx.presence, what="retained presence")
    assert presence[-1][0].body == {"state": "online", "agent": hello["agent"]}

    data = tmp_path / "train.txt"
    data.write_text("".join(f"img{i}.png {i % 3}\n" for i in range(10)))
    out = tmp_path / "out"
    ds_rv = gm.upsert(dataset("ds", NODE, data))
    job_rv = gm.upsert(job("j1", NODE, "ds", out, [cond("Train", "Waiting")], check_period=1))
    wait_for(lambda: gm.acked("LifelongLearningJob", "j1", job_rv), what="ack of the job upsert")
    assert gm.acked("Dataset", "ds", ds_rv)

    counts = wait_for(lambda: gm.reports("Dataset"), what="dataset count report")
    assert counts[-1].body["numberOfSamples"] == 10
    ready = wait_for(lambda: gm.job_events("ready", "Train"), what="Train ready")
    body = ready[0].body
    assert body["round"] == 1 and body["data"]["numberOfSamples"] == 10
    train = Path(body["data"]["trainDataURL"])
    evals = Path(body["data"]["evalDataURL"])
    assert train == out / "data" / "train" / "1" / "train.txt"
    assert evals == out / "data" / "eval" / "1" / "eval.txt"
    lines = train.read_text().splitlines() + evals.read_text().splitlines()
    assert sorted(lines) == sorted(data.read_text().splitlines())

    # A stale upsert (older rv) is acknowledged and ignored.
    stale_rv = str(int(job_rv) - 50)
    gm.upsert(
        job("j1", NODE, "ds", tmp_path / "elsewhere", [cond("Train", "Waiting")], check_period=1), rv=stale_rv
    )
    wait_for(lambda: gm.acked("LifelongLearningJob", "j1", stale_rv), what="ack of the stale upsert")
    assert state.resource_rv("LifelongLearningJob", "j1") == job_rv

    # The GM moves the job on and asks for a training worker.
    history = [cond("Train", "Waiting"), cond("Train", "Ready"), cond("Train", "Starting")]
    gm.upsert(job("j1", NODE, "ds", out, history, check_period=1))
    code = "import time\nwhile True: time.sleep(1)"
    gm.upsert(worker("j1", "Train", 1, code, env={"TRAIN_DATASET_URL": str(train)}))
    running = wait_for(
        lambda: gm.reports("Worker", lambda e: e.body["phase"] == "Running"), what="worker Running report"
    )
    assert running[0].name == "j1-train-1" and running[0].body["round"] == 1
    rec = state.record("workers", "j1-train-1")
    assert rec is not None
    pid = rec["pid"]
    assert proc_start_time(pid) is not None
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert any(e.startswith(b"LC_SERVER=http://127.0.0.1:") for e in env)
    assert b"WORKER_NAME=j1-train-1" in env and f"TRAIN_DATASET_URL={train}".encode() in env

    # Delete the job: its worker's process group is stopped, job and worker forgotten, files kept.
    gm.delete("LifelongLearningJob", NS, "j1")
    wait_for(lambda: proc_start_time(pid) is None, timeout=20, what="the worker to be stopped")
    wait_for(lambda: state.resource_rv("LifelongLearningJob", "j1") is None, what="job forgotten")
    assert state.resource_rv("Worker", "j1-train-1") is None
    wait_for(lambda: state.record("progress", "j1") is None, what="the job's progress dropped")
    assert train.exists()

    def group_gone() -> bool:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(group_gone, what="the worker's process group to be gone (reaped)")


@pytest.mark.clustered
def test_worker_info_before_job_is_kept_then_delivered(gm: FakeGM, lc: LCProcess, tmp_path: Path) -> None:
    body = {"name": "j2-train-1", "namespace": NS, "ownerName": "j2", "kind": "train", "status": "completed"}
    assert (
        _post_info(lc.api_port, "j2-train-1", body) == 202
    )  # kept until its job arrives (docs/writing-workers.md)
    # The LC does not hold j2: nothing goes up, the post is kept.
    ds_rv = gm.upsert(dataset("ds2", NODE, tmp_path / "none.txt"))
    wait_for(lambda: gm.acked("Dataset", "ds2", ds_rv), what="dataset stored")
    assert gm.job_events("workerInfo") == []
    gm.upsert(job("j2", NODE, "ds2", tmp_path / "out", [cond("Train", "Waiting")], check_period=1))
    infos = wait_for(lambda: gm.job_events("workerInfo"), what="workerInfo report")
    assert infos[0].name == "j2" and infos[0].body["worker"] == "j2-train-1"
    assert infos[0].body["info"] == body


@pytest.mark.clustered
def test_sigterm_shuts_down_cleanly(gm: FakeGM, lc: LCProcess) -> None:
    assert lc.terminate() == 0
    offline = wait_for(
        lambda: [p for p, _ in gm.rx.presence if (p.body or {}).get("state") == "offline"],
        what="presence offline",
    )
    assert offline[-1].node == NODE


@pytest.mark.clustered
def test_sync_drops_what_the_gm_no_longer_names(gm: FakeGM, lc: LCProcess, tmp_path: Path) -> None:
    state = StateReader(lc.state_dir)
    ds_rv = gm.upsert(dataset("ds3", NODE, tmp_path / "none.txt"))
    job_rv = gm.upsert(job("j3", NODE, "ds3", tmp_path / "out", [cond("Train", "Waiting")], check_period=1))
    wait_for(lambda: gm.acked("LifelongLearningJob", "j3", job_rv), what="job stored")
    gm.sync([{"kind": "Dataset", "ns": NS, "name": "ds3", "rv": ds_rv}])
    wait_for(lambda: state.resource_rv("LifelongLearningJob", "j3") is None, what="job dropped by sync")
    assert state.resource_rv("Dataset", "ds3") == ds_rv


@pytest.mark.clustered
def test_an_invalid_object_on_the_down_topic_is_refused_and_counted_and_a_good_one_converges(
    gm: FakeGM, lc: LCProcess, tmp_path: Path
) -> None:
    state = StateReader(lc.state_dir)
    # A buggy or hostile publisher: plain JSON on the node's down topic, spec.url a number.
    bad = dataset("ds-bad", NODE, tmp_path / "bad.txt")
    bad["spec"]["url"] = 123
    bad["metadata"]["resourceVersion"] = "500"
    raw = {
        "v": 1,
        "id": "raw-1",
        "node": NODE,
        "kind": "Dataset",
        "ns": NS,
        "name": "ds-bad",
        "op": "upsert",
        "rv": "500",
        "ts": time.time(),
        "body": {"object": bad},
    }
    topic = gm.topics.down(NODE, "Dataset", NS, "ds-bad")
    gm.client.publish(topic, json.dumps(raw).encode(), qos=1).wait_for_publish(10)
    good_file = tmp_path / "good.txt"
    good_file.write_text("a\nb\nc\n")
    good_rv = gm.upsert(dataset("ds-good", NODE, good_file))

    wait_for(lambda: gm.acked("Dataset", "ds-good", good_rv), what="the good dataset acknowledged")
    assert state.resource_rv("Dataset", "ds-good") == good_rv
    counts = wait_for(
        lambda: gm.reports("Dataset", lambda e: e.name == "ds-good"), what="the good dataset counted"
    )
    assert counts[-1].body["numberOfSamples"] == 3
    # the bad one: acknowledged with the reason, so a GM stops resending it; never stored
    refusal = wait_for(
        lambda: [
            a
            for env in list(gm.rx.acks)
            for a in (env.body or {}).get("applied", [])
            if a["name"] == "ds-bad" and a["rv"] == "500"
        ],
        what="the bad dataset acknowledged",
    )
    assert "object.spec.url" in refusal[0]["refused"], refusal
    assert state.resource_rv("Dataset", "ds-bad") is None

    text = lc.metrics()
    assert 'lifelong_lc_rejected_total{reason="invalid"} 1.0' in text, text
    assert 'lifelong_lc_downstream_total{result="invalid"} 1.0' in text
    assert "ds-bad" in lc.log_tail(400) and "object.spec.url" in lc.log_tail(400)
