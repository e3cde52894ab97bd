"""End to end with real processes: a broker, ``lifelong gm`` (standalone) and ``lifelong lc``.

Real worker processes (small Python scripts written by the test) train, evaluate and deploy a
"model" (a JSON file) on a text dataset. Covered, on mosquitto and on the embedded broker (the
full round and the GM killed mid-job also on the two-node RabbitMQ cluster, the GM on one node
and the LC on the other):

* a job goes Train Waiting -> Ready -> Starting -> Running -> Completed -> Eval ... -> Deploy
  Completed -> Train Waiting of round 2, driven through the kubectl-like CLI;
* the GM is SIGKILLed while the training worker runs and restarted: the job converges and no
  condition is duplicated;
* a job deleted while its LC is offline is gone from the LC after it reconnects; a job created
  while the LC is offline arrives after it reconnects.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.brokers import Broker
from harness.lc_objects import StateReader
from harness.processes import FULL_ROUND, GMProcess, LCProcess
from harness.rabbitmq import lc_password_args
from harness.waiting import wait_for

pytestmark = pytest.mark.e2e

NODE = "node-a"

WORKER = textwrap.dedent(
    """
    import json, os, sys, time, urllib.request
    from pathlib import Path

    stage = sys.argv[1]
    gate = os.environ.get("GATE_FILE")
    if gate and stage == "train":
        deadline = time.monotonic() + 120
        while not Path(gate).exists():
            if time.monotonic() > deadline:
                sys.exit(3)
            time.sleep(0.05)
    out = Path(os.environ["DEPLOY_DIR"] if stage == "deploy" else os.environ["OUTPUT_URL"])
    out.mkdir(parents=True, exist_ok=True)
    if stage == "train":
        lines = Path(os.environ["TRAIN_DATASET_URL"]).read_text().splitlines()
        model = out / "model.json"
        model.write_text(json.dumps({"samples": len(lines)}))
        results = [{"url": str(model), "format": "json", "metrics": {"samples": len(lines)}}]
    elif stage == "eval":
        urls = [u for u in os.environ["MODEL_URLS"].split(",") if u]
        assert urls and all(Path(u).exists() for u in urls), urls
        results = [{"url": urls[0], "format": "json", "metrics": {"accuracy": 0.9}}]
    else:
        urls = [u for u in os.environ["MODEL_URLS"].split(",") if u]
        assert urls and Path(urls[0]).exists(), urls
        (out / "serving").write_text(urls[0])
        results = []
    body = json.dumps({"results": results}).encode()
    url = os.environ["LC_SERVER"].rstrip("/") + "/sedna/workers/" + os.environ["WORKER_NAME"] + "/info"
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()
    """
)


class Setup:
    def __init__(self, tmp: Path, broker: Broker) -> None:
        self.tmp = tmp
        self.script = tmp / "worker.py"
        self.script.write_text(WORKER)
        self.data = tmp / "data" / "samples.txt"
        self.data.parent.mkdir(parents=True)
        self.data.write_text("".join(f"sample {i}\n" for i in range(10)))
        self.gate = tmp / "gate"
        self.out = tmp / "out"
        self.gm = GMProcess(tmp, broker_url=broker.url, prefix=broker.prefix)
        # A report sent while the GM is down is resent when the GM's presence turns online
        # again (the LC says hello anew), not after the 30 s ack timeout: the default stays.
        # on the RabbitMQ cluster the LC is on the other node than the GM, with its password
        self.lc = LCProcess(
            tmp,
            node=NODE,
            broker_url=broker.edge_url,
            prefix=broker.prefix,
            extra=lc_password_args(broker, NODE, tmp),
        )

    def template(self, stage: str, gated: bool) -> dict[str, Any]:
        env = [{"name": "DEPLOY_DIR", "value": str(self.out / "deploy")}]
        if gated:
            env.append({"name": "GATE_FILE", "value": str(self.gate)})
        container = {
            "name": stage,
            "image": "python",
            "command": [sys.executable, str(self.script), stage],
            "env": env,
        }
        return {"spec": {"nodeName": NODE, "containers": [container]}}

    def manifests(self, name: str = "job1", *, gated: bool = False) -> str:
        dataset = {
            "apiVersion": "sedna.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": "ds1"},
            "spec": {"url": str(self.data), "format": "txt", "nodeName": NODE},
        }
        job = {
            "apiVersion": "sedna.io/v1alpha1",
            "kind": "LifelongLearningJob",
            "metadata": {"name": name},
            "spec": {
                "dataset": {"name": "ds1", "trainProb": 0.8},
                "trainSpec": {
                    "template": self.template("train", gated),
                    "trigger": {
                        "checkPeriodSeconds": 1,
                        "condition": {"operator": ">", "threshold": 5.0, "metric": "num_of_samples"},
                    },
                },
                "evalSpec": {"template": self.template("eval", gated)},
                "deploySpec": {"template": self.template("deploy", gated)},
                "outputDir": str(self.out),
            },
        }
        return yaml.safe_dump_all([job, dataset])  # the CLI applies the Dataset first

    def apply(self, **kw: Any) -> None:
        out = self.gm.cli("apply", "-f", "-", stdin=self.manifests(**kw))
        assert "lifelonglearningjob.sedna.io/" in out.stdout and "created" in out.stdout, out.stdout

    def wait_conditions(
        self, expected: list[tuple[str, str]], name: str = "job1", timeout: float = 90.0, *, then: int = 0
    ) -> None:
        """Wait until the history is ``expected`` (plus at most ``then`` more), never off that path."""

        def reached() -> bool:
            self.gm.check_alive()
            self.lc.check_alive()
            got = self.gm.conditions(name)
            n = min(len(got), len(expected))
            assert got[:n] == expected[:n] and len(got) <= len(expected) + then, f"unexpected history {got}"
            return len(got) >= len(expected)

        wait_for(
            reached,
            timeout=timeout,
            interval=0.1,
            what=f"conditions {expected[-1]} of {name}\nGM:\n{self.gm.log_tail()}\nLC:\n{self.lc.log_tail()}",
        )

    def lc_holds(self, kind: str, name: str) -> bool:
        """Whether the LC's own database holds the resource (read-only look)."""
        return StateReader(self.lc.state_dir).resource_rv(kind, name) is not None

    def stop(self) -> None:
        for proc in (self.lc, self.gm):
            if proc.alive():
                proc.kill()


@pytest.fixture
def setup(tmp_path: Path, broker: Broker) -> Iterator[Setup]:
    s = Setup(tmp_path, broker)
    s.gm.start()
    s.gm.wait_ready()
    s.lc.start()
    s.lc.wait_online(s.gm)
    yield s
    s.stop()


@pytest.mark.clustered
def test_a_job_runs_a_full_round_with_real_workers(setup: Setup) -> None:
    setup.apply()
    setup.wait_conditions(FULL_ROUND)
    assert (setup.out / "deploy" / "serving").exists()
    table = setup.gm.cli("get", "ll").stdout.splitlines()
    assert table[0].split() == ["NAME", "STAGE", "STATUS", "AGE"]
    assert table[1].split()[:3] == ["job1", "Train", "Waiting"]
    described = setup.gm.cli("describe", "ll", "job1").stdout
    assert "Round:             1" in described and "Deploy   Completed" in described
    as_json = json.loads(setup.gm.cli("get", "ll", "job1", "-o", "json").stdout)
    completed = [c for c in as_json["status"]["conditions"] if c["type"] == "Completed"]
    assert "model.json" in completed[0]["data"]
    # more data starts round 2
    with setup.data.open("a") as fh:
        fh.writelines(f"more {i}\n" for i in range(10))
    setup.wait_conditions([*FULL_ROUND, ("Train", "Ready")], timeout=30, then=10)
    assert setup.gm.terminate() == 0, setup.gm.log_tail()  # SIGTERM: a clean shutdown
    assert "GM stopped" in setup.gm.log_tail()


@pytest.mark.clustered
def test_gm_killed_mid_job_converges_without_duplicate_conditions(setup: Setup) -> None:
    setup.apply(gated=True)
    setup.wait_conditions(FULL_ROUND[:4])  # Train/Running: the worker waits at the gate
    setup.gm.kill()
    setup.gate.write_text("go")  # the worker finishes while the GM is down; the LC keeps its report
    setup.gm.start()
    setup.gm.wait_ready()
    setup.wait_conditions(FULL_ROUND)
    assert len(setup.gm.conditions("job1")) == len(FULL_ROUND)


def test_job_deleted_while_the_lc_is_offline_is_gone_after_it_reconnects(setup: Setup) -> None:
    setup.apply(gated=True)
    setup.wait_conditions(FULL_ROUND[:4])
    wait_for(lambda: setup.lc_holds("LifelongLearningJob", "job1"), what="the LC holding the job")
    setup.lc.kill()
    wait_for(lambda: not setup.gm.node_online(NODE), what="the LC seen offline")
    out = setup.gm.cli("delete", "ll", "job1")
    assert 'lifelonglearningjob.sedna.io "job1" deleted' in out.stdout
    assert setup.lc_holds("LifelongLearningJob", "job1")
    setup.lc.start()
    setup.lc.wait_online(setup.gm)
    wait_for(lambda: not setup.lc_holds("LifelongLearningJob", "job1"), what="the job gone from the LC")
    wait_for(lambda: not setup.lc_holds("Worker", "job1-train-1"), what="its worker gone from the LC")
    missing = setup.gm.cli("get", "ll", "job1", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_job_created_while_the_lc_is_offline_arrives_after_it_reconnects(setup: Setup) -> None:
    setup.lc.terminate()
    wait_for(lambda: not setup.gm.node_online(NODE), what="the LC seen offline")
    setup.apply()  # the node is known from its earlier hello
    assert setup.gm.conditions("job1") == [("Train", "Waiting")]
    setup.lc.start()
    setup.lc.wait_online(setup.gm)
    setup.wait_conditions(FULL_ROUND)


def _ready(gm: GMProcess, name: str) -> tuple[str, str] | None:
    """The (status, reason) of Dataset ``name``'s Ready condition, from the GM's API.

    The waits below poll this, in this process, and then check ``describe`` once: a ``describe``
    per poll started a client process (about 0.6 s of CPU) every 20 ms for as long as the wait
    lasted. Each state waited for lasts until the test changes it, so ``describe`` shows it."""
    conds = ((gm.get("Dataset", name) or {}).get("status") or {}).get("conditions") or []
    ready = [(str(c.get("status")), str(c.get("reason"))) for c in conds if c.get("type") == "Ready"]
    return ready[0] if ready else None


def test_a_dataset_applied_before_its_node_came_online_waits_then_the_job_converges(
    tmp_path: Path, broker: Broker
) -> None:
    s = Setup(tmp_path, broker)
    try:
        s.gm.start()
        s.gm.wait_ready()
        s.apply()  # node-a has never said hello: stored all the same, as Kubernetes would
        wait_for(
            lambda: _ready(s.gm, "ds1") == ("False", "WaitingForNode"),
            timeout=30,
            what=f"the Dataset waiting for its node\n{s.gm.log_tail()}",
        )
        described = s.gm.cli("describe", "ds", "ds1").stdout
        assert "Ready:             False (WaitingForNode)" in described, described
        assert "node 'node-a' has not said hello" in described
        assert "node-a: WaitingForNode" in s.gm.cli("describe", "ll", "job1").stdout
        assert s.gm.conditions("job1") == [("Train", "Waiting")]

        s.lc.start()  # the node appears: its hello brings it the Dataset and the job
        s.lc.wait_online(s.gm)
        s.wait_conditions(FULL_ROUND)
        described = s.gm.cli("describe", "ds", "ds1").stdout
        assert "Ready:             True (Counted)" in described and "Samples:           10" in described
        assert "Waiting For" not in s.gm.cli("describe", "ll", "job1").stdout

        # What the edge finds reaches describe through the bus: the file goes, then comes back.
        s.data.rename(s.data.with_suffix(".away"))
        wait_for(
            lambda: _ready(s.gm, "ds1") == ("False", "FileMissing"),
            timeout=30,
            what=f"FileMissing\n{s.lc.log_tail()}",
        )
        described = s.gm.cli("describe", "ds", "ds1").stdout
        assert "Ready:             False (FileMissing)" in described, described
        assert f"{s.data} does not exist" in described
        s.data.with_suffix(".away").rename(s.data)
        wait_for(lambda: _ready(s.gm, "ds1") == ("True", "Counted"), timeout=30, what="Counted again")
        described = s.gm.cli("describe", "ds", "ds1").stdout
        assert "Ready:             True (Counted)" in described, described
    finally:
        s.stop()


def test_a_node_is_not_online_after_a_gm_restart_until_it_says_hello(tmp_path: Path, broker: Broker) -> None:
    s = Setup(tmp_path, broker)
    try:
        s.gm.start()
        s.gm.wait_ready()
        s.lc.start()
        s.lc.wait_online(s.gm)
        s.gm.kill()
        s.lc.kill()  # gone while the GM is down: its will reaches nobody who keeps it...
        broker.restart()  # ...since the broker, without persistence, forgets its retained messages
        s.gm.start()
        s.gm.wait_ready()
        wait_for(
            lambda: (
                "1 nodes marked offline" in s.gm.log_tail(200)
                and "connected to the broker" in s.gm.log_tail(200)
            ),
            timeout=30,
            what=f"the GM started and connected\n{s.gm.log_tail()}",
        )
        nodes = s.gm.api("GET", "/api/v1/nodes")["items"]
        assert [(n["node"], n["online"]) for n in nodes] == [(NODE, False)]
        assert "Offline" in s.gm.cli("nodes").stdout
        s.lc.start()  # it speaks again: online
        s.lc.wait_online(s.gm)
        # An offline node can be deleted; the GM forgets it, and its LC's next hello brings it back.
        s.lc.terminate()
        wait_for(lambda: not s.gm.node_online(NODE), timeout=30, what="the node offline")
        assert s.gm.cli("delete", "node", NODE).stdout.strip() == f'node "{NODE}" deleted'
        assert s.gm.api("GET", "/api/v1/nodes")["items"] == []
        missing = s.gm.cli("delete", "node", NODE, check=False)
        assert missing.returncode == 1 and "NotFound" in missing.stderr
    finally:
        s.stop()
