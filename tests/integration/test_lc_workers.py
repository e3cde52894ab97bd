"""Worker runtime of the real ``lifelong lc`` (standalone mode), GM played by the test:
phases with exit codes, the models a worker posted in its Succeeded report, and a worker
that outlives an LC SIGKILL is adopted (not started twice) and reported when it ends.
Also scrapes the LC's Prometheus metrics once. A Sedna-shaped worker (args only, workingDir,
its image mapped in the LC's config) sees every Sedna variable of its stage and none of the
LC's own environment; without the mapping it fails naming the image."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness.brokers import Broker
from harness.lc_gm import FakeGM, LCProcess
from harness.lc_objects import StateReader, cond, dataset, job, worker
from harness.waiting import wait_for

from lifelong.cloud.controllers.lifelonglearning.workerenv import worker_env
from lifelong.common.api import Dataset, LifelongLearningJob, parse_resource
from lifelong.common.stages import Stage
from lifelong.common.statemachine import Condition

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


# -- a Sedna-shaped worker: args only, workingDir, the image mapped in the LC's config -------

ATCII = "kubeedge/sedna-example-lifelong-learning-atcii-classifier:v0.3.0"

DUMP_ENV = """
import json, os, sys
from pathlib import Path
Path(sys.argv[1]).write_text(json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}))
"""


def _sedna_history() -> list[Condition]:
    """Round 1 went through; round 2 is at Deploy, so every stage's variables have a value."""

    def c(stage: str, type_: str, data: dict | None = None) -> Condition:
        return Condition.from_dict(cond(stage, type_, data))

    def round_(n: int) -> list[Condition]:
        model = {"url": f"/out/train/{n}/index.pkl", "format": "pkl"}
        pools = {"trainDataURL": f"/d/train/{n}/train.txt", "evalDataURL": f"/d/eval/{n}/eval.txt"}
        return [
            c("Train", "Waiting"),
            c("Train", "Ready", pools),
            c("Train", "Starting"),
            c("Train", "Completed", {"models": [model]}),
            c("Eval", "Waiting"),
            c("Eval", "Ready", {"models": [model]}),
            c("Eval", "Starting"),
            c("Eval", "Completed", {"models": [model]}),
            c("Deploy", "Waiting"),
            c("Deploy", "Ready", {"model": {"url": "/out/deploy/index.pkl"}}),
            c("Deploy", "Starting"),
        ]

    return [*round_(1), c("Deploy", "Completed"), *round_(2)]


def test_a_sedna_shaped_worker_sees_sednas_variables_and_nothing_of_the_lcs(
    broker: Broker, prefix: str, tmp_path: Path, gm: FakeGM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sedna's templates give ``args: ["train.py"]`` and ``workingDir``, no command: the LC runs
    them with the entrypoint its config gives the image. Each stage's worker sees every Sedna
    variable with the GM's value (computed here by the GM's own ``worker_env``), the LC's local
    ones, the base environment, and not a variable that only the LC's environment has."""
    monkeypatch.setenv("LC_ONLY_SECRET", "must-not-leak")
    app = tmp_path / "app"
    app.mkdir()
    for script in ("train.py", "eval.py", "inference.py"):
        (app / script).write_text(DUMP_ENV)
    config = tmp_path / "lc.yaml"
    config.write_text(yaml.safe_dump({"images": {ATCII: {"entrypoint": [sys.executable]}}}))
    lc = LCProcess(
        node=NODE,
        broker_url=broker.url,
        prefix=prefix,
        state_dir=tmp_path / "state",
        extra=["--config", str(config)],
    )
    wire = job("sedna-job", NODE, "ds", Path("/out"), [])
    parsed = parse_resource(wire)
    assert isinstance(parsed, LifelongLearningJob)
    dataset_obj = parse_resource(dataset("ds", NODE, Path("/data/index.txt")))
    assert isinstance(dataset_obj, Dataset)
    history = _sedna_history()
    stages = {  # the worker of each stage in round 2, with the history as the GM had it then
        Stage.TRAIN: history[:15],
        Stage.EVAL: history[:19],
        Stage.DEPLOY: history[:],
    }
    script_of = {Stage.TRAIN: "train.py", Stage.EVAL: "eval.py", Stage.DEPLOY: "inference.py"}
    expected: dict[str, dict[str, str]] = {}
    lc.start()
    try:
        lc.wait_started(gm, 0)
        for stage, conds in stages.items():
            env = worker_env(parsed, stage, 2, conds, dataset_obj)
            w = worker("sedna-job", stage.value, 2, "", env=env)
            name = w["metadata"]["name"]
            dump = tmp_path / f"{name}.json"
            w["spec"]["template"]["spec"]["containers"] = [
                {
                    "name": f"{stage.value.lower()}-worker",
                    "image": ATCII,
                    "imagePullPolicy": "IfNotPresent",
                    "args": [script_of[stage], str(dump)],
                    "workingDir": str(app),
                    "env": [{"name": "early_stopping_rounds", "value": "100"}],
                }
            ]
            expected[name] = env
            gm.upsert(w)
        for name in expected:
            wait_for(lambda n=name: _phase(gm, n, "Succeeded"), what=f"{name} Succeeded\n{lc.log_tail()}")
    finally:
        lc.kill()
    lc_server = f"http://127.0.0.1:{lc.api_port}"
    for name, env in expected.items():
        seen = json.loads((tmp_path / f"{name}.json").read_text())
        assert seen["cwd"] == str(app)
        got = seen["env"]
        assert "LC_ONLY_SECRET" not in got
        for key, value in env.items():
            want = lc_server if key == "LC_SERVER" else value
            assert got.get(key) == want, (name, key)
        assert got["WORKER_NAME"] == name and got["NAMESPACE"] == "default" and got["JOB_NAME"] == "sedna-job"
        assert got["early_stopping_rounds"] == "100"
        base = {"PATH", "HOME", "LANG", "PYTHONUNBUFFERED", "LIFELONG_EXIT_FILE", "PWD", "TZ"}
        assert set(got) <= base | set(env) | {"early_stopping_rounds"}, sorted(set(got) - base - set(env))
    train, evaluate, deploy = (expected[f"sedna-job-{s}-2"] for s in ("train", "eval", "deploy"))
    assert train["HAS_COMPLETED_INITIAL_TRAINING"] == "true"
    assert train["CLOUD_KB_INDEX"] == "/out/train/1/index.pkl"
    assert train["TRAIN_DATASET_URL"] == "/d/train/2/train.txt"
    assert train["ORIGINAL_DATASET_URL"] == "/data/index.txt"
    assert train["OUTPUT_URL"] == "/out/train/2" and train["KB_SERVER"] == "http://localhost:9020"
    assert evaluate["MODEL_URLS"] == "/out/train/2/index.pkl"
    assert evaluate["TEST_DATASET_URL"] == "/d/eval/2/eval.txt" and evaluate["OUTPUT_URL"] == "/out/eval/2"
    assert deploy["MODEL_URLS"] == "/out/deploy/index.pkl" and deploy["OUTPUT_URL"] == "/out"


def test_an_args_only_worker_without_an_image_entry_fails_naming_the_image(
    broker: Broker, prefix: str, tmp_path: Path, gm: FakeGM
) -> None:
    lc = LCProcess(node=NODE, broker_url=broker.url, prefix=prefix, state_dir=tmp_path / "state")
    lc.start()
    try:
        lc.wait_started(gm, 0)
        w = worker("j", "Train", 1, "")
        w["spec"]["template"]["spec"]["containers"] = [
            {"name": "train-worker", "image": ATCII, "args": ["train.py"], "workingDir": str(tmp_path)}
        ]
        gm.upsert(w)
        failed = wait_for(lambda: _phase(gm, "j-train-1", "Failed"), what="Failed report")
    finally:
        lc.kill()
    body = failed[0].body
    assert body["exitCode"] is None
    assert f"image {ATCII!r} has no entry in the LC's config" in body["message"]
    assert "'images'" in body["message"]
