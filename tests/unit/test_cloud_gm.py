"""The GM in-process, with its bus replaced by a recorder: controllers, downstream, upstream.

The network is covered by tests/integration/test_gm_bus.py (real brokers); here the GM's
decisions are checked: which nodes get what, the stage machine driven by reports, idempotent
apply (also across a GM restart on the same databases), rejected envelopes, validation at apply.
"""

from __future__ import annotations

import http.client
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.waiting import DeadlineExceeded, wait_for

from lifelong.cloud.api_server import ApiServer, GMApi, validate
from lifelong.cloud.delivery import Delivery
from lifelong.cloud.gmstate import GMState
from lifelong.cloud.metrics import GMMetrics
from lifelong.cloud.service import GMService, GMSettings
from lifelong.cloud.stores.base import Conflict, ModelCache, NotFound, parse
from lifelong.common.api import Dataset, LifelongLearningJob, parse_resource
from lifelong.common.codec import decode, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.errors import NotConnected, ValidationError
from lifelong.common.messages import Applied
from lifelong.common.topics import Topics

PREFIX = "t/v1"
TOPICS = Topics(PREFIX)


class FakeBus:
    """Records what the GM publishes; ``connected=False`` makes publishing fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Envelope]] = []
        self.first_bytes: set[bytes] = set()
        self.connected = True
        self.lock = threading.Lock()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> object:
        if not self.connected:
            raise NotConnected("down")
        with self.lock:
            self.sent.append((topic, decode(payload)))
            self.first_bytes.add(payload[:1])
        return object()

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass

    def envelopes(
        self, node: str | None = None, op: Op | None = None, kind: str | None = None
    ) -> list[Envelope]:
        with self.lock:
            return [
                e
                for _, e in self.sent
                if (node is None or e.node == node)
                and (op is None or e.op is op)
                and (kind is None or e.kind == kind)
            ]

    def clear(self) -> None:
        with self.lock:
            self.sent.clear()


def template(node: str, command: list[str] | None = None) -> dict[str, Any]:
    return {
        "spec": {
            "nodeName": node,
            "containers": [{"name": "w", "image": "x", "command": command or ["true"]}],
        }
    }


def dataset(name: str = "ds1", node: str = "node-a") -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"url": "/data/ds.txt", "format": "txt", "nodeName": node},
    }


def job(
    name: str = "job1", *, train: str = "node-a", eval_: str = "node-a", deploy: str = "node-b"
) -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "LifelongLearningJob",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"name": "ds1", "trainProb": 0.8},
            "trainSpec": {
                "template": template(train),
                "trigger": {
                    "checkPeriodSeconds": 1,
                    "condition": {"operator": ">", "threshold": 5.0, "metric": "num_of_samples"},
                },
            },
            "evalSpec": {"template": template(eval_)},
            "deploySpec": {"template": template(deploy)},
            "outputDir": "/out/job1",
        },
    }


class GM:
    """A GMService on two SQLite files with a FakeBus; ``restart()`` keeps the files."""

    def __init__(self, tmp: Path, **settings: Any) -> None:
        self.tmp = tmp
        self.settings = settings
        self.bus = FakeBus()
        self.svc = self._make()
        self.seq = 0

    def _make(self) -> GMService:
        svc = GMService(
            GMSettings(
                broker="mqtt://127.0.0.1:1",
                store=f"sqlite:{self.tmp / 'store.db'}",
                api_port=-1,
                prefix=PREFIX,
                resend_base=0.2,
                resend_cap=0.4,
                **{"backoff_base": 0.5, **self.settings},
            ),
            bus=self.bus,
        )
        svc.start_controllers()
        return svc

    def restart(self) -> None:
        self.svc.stop()
        self.bus = FakeBus()
        self.svc = self._make()

    def stop(self) -> None:
        self.svc.stop()

    @property
    def api(self) -> GMApi:
        return GMApi(self.svc.store, self.svc.state, self.svc.metrics, models=self.svc.models)

    def deliver(self, topic: str, env: Envelope | bytes) -> None:
        payload = env if isinstance(env, bytes) else encode(env)
        self.svc.intake.on_message(topic, payload, False)

    def hello(
        self,
        node: str,
        resources: list[dict[str, Any]] | None = None,
        epoch: str = "ep1",
        low: int | None = None,
        parted: bool = False,
    ) -> None:
        body = {
            "agent": "test-lc/0",
            "epoch": epoch,
            "boot": "b1",
            "resources": resources or [],
            "outbox": {"depth": 0, "lowSeq": low, "nextSeq": 1},
        }
        if parted:  # as an LC that reads a sync in parts says it: a hello in one part
            body.update({"helloId": f"h-{node}-{epoch}", "part": 0, "parts": 1})
        self.deliver(TOPICS.up_ctl(node), Envelope.new(node=node, kind=CONTROL_KIND, op=Op.HELLO, body=body))

    def report(self, node: str, kind: str, name: str, body: dict[str, Any], seq: int | None = None) -> int:
        if seq is None:
            self.seq += 1
            seq = self.seq
        env = Envelope.new(node=node, kind=kind, ns="default", name=name, op=Op.REPORT, seq=seq, body=body)
        self.deliver(TOPICS.up(node, kind, "default", name), env)
        return seq

    def idle(self) -> None:
        assert self.svc.executor.wait_idle(10)

    def job(self, name: str = "job1") -> dict[str, Any]:
        obj = self.svc.store.get("LifelongLearningJob", "default", name)
        assert obj is not None
        return obj

    def conditions(self, name: str = "job1") -> list[tuple[str, str]]:
        conds = (self.job(name).get("status") or {}).get("conditions") or []
        return [(c["stage"], c["type"]) for c in conds]

    def acked_seqs(self, node: str) -> list[int]:
        return [s for e in self.bus.envelopes(node, Op.ACK) for s in (e.body or {}).get("seqs", [])]


@pytest.fixture
def gm(tmp_path: Path) -> Iterator[GM]:
    g = GM(tmp_path)
    yield g
    g.stop()


def setup_job(gm: GM) -> None:
    gm.hello("node-a")
    gm.hello("node-b")
    gm.idle()
    gm.api.apply(dataset())
    gm.api.apply(job())
    wait_for(lambda: gm.conditions() == [("Train", "Waiting")], what="Train/Waiting")


# -- downstream node selection --------------------------------------------------------------


def test_job_goes_to_dataset_train_eval_and_deploy_nodes() -> None:
    def nodes(j: dict[str, Any], ds: dict[str, Any] | None) -> list[str]:
        model = parse_resource(j)
        assert isinstance(model, LifelongLearningJob)
        ds_model = parse_resource(ds) if ds is not None else None
        assert ds_model is None or isinstance(ds_model, Dataset)
        return model.node_names(ds_model)

    j = job(train="node-t", eval_="node-e", deploy="node-d")
    assert nodes(j, dataset(node="node-a")) == ["node-a", "node-t", "node-e", "node-d"]
    assert nodes(job(train="node-a", eval_="node-a", deploy="node-a"), dataset()) == ["node-a"]
    assert nodes(j, None) == ["node-t", "node-e", "node-d"]


def test_applied_job_is_sent_to_every_node_that_needs_it(gm: GM) -> None:
    setup_job(gm)
    wait_for(lambda: gm.bus.envelopes("node-b", Op.UPSERT, "LifelongLearningJob"), what="job on node-b")
    up_a = gm.bus.envelopes("node-a", Op.UPSERT, "LifelongLearningJob")
    assert up_a and up_a[-1].body["object"]["metadata"]["name"] == "job1"
    ds_a = gm.bus.envelopes("node-a", Op.UPSERT, "Dataset")
    assert ds_a and not gm.bus.envelopes("node-b", Op.UPSERT, "Dataset")
    # every upsert carries the object's own version
    for env in gm.bus.envelopes(op=Op.UPSERT):
        assert env.rv == env.body["object"]["metadata"]["resourceVersion"]


def test_offline_node_gets_nothing_until_its_hello_then_the_difference_and_a_sync(gm: GM) -> None:
    gm.hello("node-a")
    gm.hello("node-b")
    gm.idle()
    gm.deliver(
        TOPICS.node_presence("node-b"),
        Envelope.new(node="node-b", kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": "offline"}),
    )
    gm.idle()  # presence is recorded on the node's work queue
    gm.bus.clear()
    gm.api.apply(dataset())
    gm.api.apply(job())
    wait_for(lambda: gm.conditions() == [("Train", "Waiting")], what="Train/Waiting")
    gm.idle()
    assert not gm.bus.envelopes("node-b")
    gm.bus.clear()
    gm.hello("node-b", resources=[{"kind": "LifelongLearningJob", "ns": "default", "name": "old", "rv": "1"}])
    gm.idle()
    sent = gm.bus.envelopes("node-b")
    assert [e.op for e in sent] == [Op.UPSERT, Op.SYNC]
    assert sent[1].body == {
        "resources": [{"kind": "LifelongLearningJob", "ns": "default", "name": "job1", "rv": sent[0].rv}]
    }


def test_a_dataset_moved_to_another_node_takes_its_jobs_there(gm: GM) -> None:
    gm.hello("node-a")
    gm.hello("node-b")
    gm.hello("node-c")
    gm.idle()  # the hellos are recorded on the nodes' work queues
    gm.api.apply(dataset(name="other", node="node-a"))  # not used by the job: not re-reconciled
    gm.api.apply(dataset())
    gm.api.apply(job())
    wait_for(lambda: gm.conditions() == [("Train", "Waiting")], what="Train/Waiting")
    gm.idle()
    assert not gm.bus.envelopes("node-c", kind="LifelongLearningJob")
    gm.api.apply(dataset(node="node-c"))
    wait_for(lambda: gm.bus.envelopes("node-c", Op.UPSERT, "LifelongLearningJob"), what="the job on node-c")
    assert gm.svc.jobs.jobs_using("default", "ds1") == [("LifelongLearningJob", "default", "job1")]
    assert gm.svc.jobs.jobs_using("default", "other") == []
    gm.api.delete("LifelongLearningJob", "default", "job1")
    wait_for(lambda: gm.svc.jobs.jobs_using("default", "ds1") == [], what="the index to forget the job")


def test_hello_with_current_versions_sends_only_the_sync(gm: GM) -> None:
    setup_job(gm)
    wait_for(lambda: gm.bus.envelopes("node-b", Op.UPSERT), what="job on node-b")
    gm.idle()
    rv = gm.job()["metadata"]["resourceVersion"]
    gm.bus.clear()
    gm.hello("node-b", resources=[{"kind": "LifelongLearningJob", "ns": "default", "name": "job1", "rv": rv}])
    gm.idle()
    assert [e.op for e in gm.bus.envelopes("node-b")] == [Op.SYNC]


def test_unacked_changes_are_resent_with_backoff_and_acked_ones_are_not(gm: GM) -> None:
    setup_job(gm)
    wait_for(lambda: len(gm.bus.envelopes("node-b", Op.UPSERT)) >= 2, timeout=5, what="a resend")
    env = gm.bus.envelopes("node-b", Op.UPSERT)[-1]
    ack = {"applied": [{"kind": env.kind, "ns": env.ns, "name": env.name, "rv": env.rv, "op": "upsert"}]}
    gm.deliver(TOPICS.up_ctl("node-b"), Envelope.new(node="node-b", kind=CONTROL_KIND, op=Op.ACK, body=ack))
    gm.idle()
    wait_for(lambda: gm.svc.state.unacked_counts().get("node-b", 0) == 0, what="node-b acked")
    gm.bus.clear()
    gm.svc.delivery.resend_due(now=10**10)
    assert not gm.bus.envelopes("node-b")


def test_deleted_job_sends_deletes_and_a_reconnecting_node_gets_the_delete(gm: GM) -> None:
    setup_job(gm)
    wait_for(lambda: gm.bus.envelopes("node-b", Op.UPSERT), what="job on node-b")
    gm.idle()
    rv_held = gm.bus.envelopes("node-b", Op.UPSERT)[-1].rv
    gm.deliver(
        TOPICS.node_presence("node-b"),
        Envelope.new(node="node-b", kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": "offline"}),
    )
    gm.idle()  # presence is recorded on the node's work queue
    gm.api.delete("LifelongLearningJob", "default", "job1")
    wait_for(lambda: gm.bus.envelopes("node-a", Op.DELETE, "LifelongLearningJob"), what="delete to node-a")
    gm.idle()
    assert not gm.bus.envelopes("node-b", Op.DELETE)
    gm.hello(
        "node-b", resources=[{"kind": "LifelongLearningJob", "ns": "default", "name": "job1", "rv": rv_held}]
    )
    gm.idle()
    ops = [(e.op, e.kind) for e in gm.bus.envelopes("node-b")]
    assert (Op.DELETE, "LifelongLearningJob") in ops
    deletion = gm.bus.envelopes("node-b", Op.DELETE)[-1]
    assert int(deletion.rv or 0) > int(rv_held or 0)
    assert gm.bus.envelopes("node-b", Op.SYNC)[-1].body == {"resources": []}


def test_dataset_counts_are_not_sent_back_to_their_node(gm: GM) -> None:
    setup_job(gm)
    gm.idle()
    before = len(gm.bus.envelopes("node-a", Op.UPSERT, "Dataset"))
    gm.report("node-a", "Dataset", "ds1", {"numberOfSamples": 7, "updateTime": "2026-01-01T00:00:00Z"})
    gm.idle()
    ds = gm.svc.store.get("Dataset", "default", "ds1")
    assert ds is not None and ds["status"]["numberOfSamples"] == 7
    gm.idle()
    assert len(gm.bus.envelopes("node-a", Op.UPSERT, "Dataset")) == before


# -- the stage machine, driven by reports ---------------------------------------------------


def ready(stage: str, rnd: int, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"event": "ready", "stage": stage, "round": rnd, "data": data or {}}


def phase(
    stage: str, rnd: int, p: str, output: dict[str, Any] | None = None, code: int | None = None
) -> dict[str, Any]:
    return {
        "job": "job1",
        "stage": stage,
        "round": rnd,
        "phase": p,
        "exitCode": code,
        "message": "",
        "output": output or {},
    }


def worker_name(stage: str, rnd: int) -> str:
    return f"job1-{stage.lower()}-{rnd}"


def test_a_round_goes_train_eval_deploy_and_back_to_train(gm: GM) -> None:
    setup_job(gm)
    gm.report(
        "node-a",
        "LifelongLearningJob",
        "job1",
        ready("Train", 1, {"trainDataURL": "/d/t.txt", "evalDataURL": "/d/e.txt"}),
    )
    wait_for(lambda: gm.conditions()[-1] == ("Train", "Starting"), what="Train/Starting")
    wait_for(lambda: gm.bus.envelopes("node-a", Op.UPSERT, "Worker"), what="the Worker sent to node-a")
    worker = gm.bus.envelopes("node-a", Op.UPSERT, "Worker")[-1].body["object"]
    assert worker["metadata"]["name"] == "job1-train-1"
    assert worker["spec"]["env"]["TRAIN_DATASET_URL"] == "/d/t.txt"
    assert worker["spec"]["env"]["OUTPUT_URL"] == "/out/job1/train/1"
    gm.report("node-a", "Worker", worker_name("Train", 1), phase("Train", 1, "Running"))
    models = {"models": [{"url": "/out/job1/1/train/model.pkl", "format": "pkl"}]}
    gm.report("node-a", "Worker", worker_name("Train", 1), phase("Train", 1, "Succeeded", models))
    wait_for(lambda: gm.conditions()[-1] == ("Eval", "Waiting"), what="Eval/Waiting")
    wait_for(
        lambda: gm.svc.store.get("Worker", "default", "job1-train-1") is None,
        what="the finished worker removed",
    )
    gm.report("node-a", "LifelongLearningJob", "job1", ready("Eval", 1, models))
    wait_for(lambda: gm.conditions()[-1] == ("Eval", "Starting"), what="Eval/Starting")
    wait_for(lambda: gm.svc.store.get("Worker", "default", "job1-eval-1"), what="eval worker")
    env = gm.svc.store.get("Worker", "default", "job1-eval-1")["spec"]["env"]
    assert env["MODEL_URLS"] == "/out/job1/1/train/model.pkl"
    assert env["TEST_DATASET_URL"] == "/d/e.txt"
    gm.report("node-a", "Worker", worker_name("Eval", 1), phase("Eval", 1, "Succeeded", models))
    wait_for(lambda: gm.conditions()[-1] == ("Deploy", "Waiting"), what="Deploy/Waiting")
    gm.report("node-b", "LifelongLearningJob", "job1", ready("Deploy", 1, {"model": models["models"][0]}))
    wait_for(lambda: gm.svc.store.get("Worker", "default", "job1-deploy-1"), what="deploy worker")
    wait_for(lambda: gm.bus.envelopes("node-b", Op.UPSERT, "Worker"), what="deploy worker on node-b")
    gm.report("node-b", "Worker", worker_name("Deploy", 1), phase("Deploy", 1, "Succeeded"))
    wait_for(lambda: gm.conditions()[-1] == ("Train", "Waiting"), what="Train/Waiting of round 2")
    assert gm.conditions() == [
        ("Train", "Waiting"), ("Train", "Ready"), ("Train", "Starting"), ("Train", "Running"),
        ("Train", "Completed"), ("Eval", "Waiting"), ("Eval", "Ready"), ("Eval", "Starting"),
        ("Eval", "Completed"), ("Deploy", "Waiting"), ("Deploy", "Ready"), ("Deploy", "Starting"),
        ("Deploy", "Completed"), ("Train", "Waiting"),
    ]  # fmt: skip
    completed = next(c for c in gm.job()["status"]["conditions"] if c["type"] == "Completed")
    assert '"models"' in completed["data"]


def _last(gm: GM, name: str = "job1") -> dict[str, Any]:
    conditions: list[dict[str, Any]] = gm.job(name)["status"]["conditions"]
    return conditions[-1]


def test_a_failed_train_is_retried_by_the_gm_on_the_same_data_after_its_backoff(gm: GM) -> None:
    setup_job(gm)
    data = {"trainDataURL": "/d/t.txt", "evalDataURL": "/d/e.txt"}
    gm.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1, data))
    wait_for(lambda: gm.svc.store.get("Worker", "default", "job1-train-1"), what="the first train worker")
    gm.report("node-a", "Worker", worker_name("Train", 1), phase("Train", 1, "Failed", code=3))
    wait_for(lambda: ("Train", "Failed") in gm.conditions(), what="Train/Failed")
    conditions = gm.job()["status"]["conditions"]
    at = gm.conditions().index(("Train", "Failed"))
    failed, retry = conditions[at : at + 2]  # (the retry may have started already)
    assert "exit code 3" in failed["message"]
    assert (retry["stage"], retry["type"], retry["reason"]) == ("Train", "Ready", "Retry")
    retry_data = json.loads(retry["data"])
    assert {k: retry_data[k] for k in data} == data
    assert "attempt 2 starts at " + retry_data["retryAfter"] in retry["message"]
    assert "Train attempt 1 of 7 failed" in retry["message"]
    # No report from the edge: the GM starts attempt 2 by itself once retryAfter has passed,
    # as a new worker of the same round, on the same files.
    wait_for(lambda: gm.svc.store.get("Worker", "default", "job1-train-1-retry1"), what="the retried worker")
    assert gm.conditions()[-3:] == [("Train", "Failed"), ("Train", "Ready"), ("Train", "Starting")]
    assert _last(gm)["lastTransitionTime"] >= retry_data["retryAfter"]
    worker = gm.svc.store.get("Worker", "default", "job1-train-1-retry1")
    assert worker["spec"]["round"] == 1
    env = worker["spec"]["env"]
    assert (env["TRAIN_DATASET_URL"], env["WORKER_NAME"]) == ("/d/t.txt", "job1-train-1-retry1")
    # A late report of the failed attempt's worker changes nothing.
    before = gm.conditions()
    gm.report("node-a", "Worker", worker_name("Train", 1), phase("Train", 1, "Failed", code=3))
    gm.report("node-a", "Worker", worker_name("Train", 1), phase("Train", 1, "Succeeded"))
    gm.idle()
    assert gm.conditions() == before
    # The retry succeeds: the round goes on to Eval, still round 1.
    gm.report("node-a", "Worker", "job1-train-1-retry1", phase("Train", 1, "Succeeded"))
    wait_for(lambda: gm.conditions()[-1] == ("Eval", "Waiting"), what="Eval/Waiting")
    assert LifelongLearningJob.model_validate(gm.job()).round == 1


def test_once_the_retries_are_used_up_the_round_is_given_up(tmp_path: Path) -> None:
    g = GM(tmp_path, retry_limit=1, backoff_base=0.2)
    try:
        setup_job(g)
        g.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1))
        wait_for(lambda: g.svc.store.get("Worker", "default", "job1-train-1"), what="attempt 1")
        g.report("node-a", "Worker", worker_name("Train", 1), phase("Train", 1, "Failed", code=1))
        wait_for(lambda: g.svc.store.get("Worker", "default", "job1-train-1-retry1"), what="attempt 2")
        assert "if it fails too, round 1 is given up" in g.job()["status"]["conditions"][-2]["message"]
        g.report("node-a", "Worker", "job1-train-1-retry1", phase("Train", 1, "Failed", code=1))
        wait_for(lambda: g.conditions()[-1] == ("Train", "Waiting"), what="Train/Waiting: given up")
        assert _last(g)["reason"] == "TrainFailed"
        assert "attempt 2 of 2 failed, the last one: round 1 is given up" in _last(g)["message"]
        g.idle()
        assert g.svc.store.get("Worker", "default", "job1-train-1-retry2") is None
        # The trigger fires again on new samples: round 2, first attempt.
        g.report("node-a", "LifelongLearningJob", "job1", ready("Train", 2))
        wait_for(
            lambda: g.svc.store.get("Worker", "default", "job1-train-2"), what="the round-2 train worker"
        )
    finally:
        g.stop()


def test_a_retry_pending_across_a_gm_restart_still_happens(tmp_path: Path) -> None:
    g = GM(tmp_path, backoff_base=2.0)
    try:
        setup_job(g)
        g.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1))
        wait_for(lambda: g.svc.store.get("Worker", "default", "job1-train-1"), what="attempt 1")
        g.report("node-a", "Worker", worker_name("Train", 1), phase("Train", 1, "Failed", code=1))
        wait_for(lambda: g.conditions()[-1] == ("Train", "Ready"), what="the retry waiting")
        g.restart()  # the delayed requeue of the old process is gone with it
        wait_for(lambda: g.svc.store.get("Worker", "default", "job1-train-1-retry1"), what="attempt 2")
        assert g.conditions()[-1] == ("Train", "Starting")
    finally:
        g.stop()


def test_the_same_report_twice_appends_one_condition_and_is_acked_twice(gm: GM) -> None:
    setup_job(gm)
    seq = gm.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1))
    gm.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1), seq=seq)
    gm.idle()
    wait_for(lambda: gm.acked_seqs("node-a").count(seq) == 2, what="both copies acked")
    wait_for(lambda: gm.conditions()[-1] == ("Train", "Starting"), what="Train/Starting")
    assert gm.conditions().count(("Train", "Ready")) == 1
    assert gm.svc.metrics.upstream_duplicate.labels(kind="LifelongLearningJob")._value.get() >= 1


JOB1 = ("LifelongLearningJob", "default", "job1")


def hold_worker(gm: GM, key: tuple[str, str, str]) -> threading.Event:
    """Keep the executor thread that runs ``key``'s work busy until the event is set, so that the
    reports submitted meanwhile queue behind it and are taken as one burst."""
    release = threading.Event()
    gm.svc.executor.submit(key, lambda: release.wait(10) and None)
    return release


def info(worker: str, value: int) -> dict[str, Any]:
    return {"event": "workerInfo", "worker": worker, "info": {"v": value}}


def test_reports_queued_together_are_applied_in_one_commit_and_acked_after_it(gm: GM) -> None:
    setup_job(gm)
    gm.idle()
    before = len(gm.bus.envelopes("node-a", Op.ACK))
    release = hold_worker(gm, JOB1)
    burst_thread = f"gm-{gm.svc.executor.worker_of(JOB1)}"
    commits: list[tuple[str, int]] = []  # (thread, acks published by then) at each COMMIT

    def traced(sql: str) -> None:
        if sql == "COMMIT":
            commits.append((threading.current_thread().name, len(gm.bus.envelopes("node-a", Op.ACK))))

    seqs = [gm.report("node-a", "LifelongLearningJob", "job1", info(f"w{i}", i)) for i in range(20)]
    assert gm.svc.intake.queued("node-a") == 20
    gm.svc.state.db.trace(traced)
    try:
        release.set()
        gm.idle()
    finally:
        gm.svc.state.db.trace(None)
    acks = gm.bus.envelopes("node-a", Op.ACK)[before:]
    assert [(a.body or {}).get("seqs") for a in acks] == [seqs]  # one ack for the burst
    assert [c for c in commits if c[0] == burst_thread] == [(burst_thread, before)]  # one commit, before it
    assert all(gm.svc.state.is_applied("node-a", "ep1", s) for s in seqs)
    assert gm.svc.state.worker_info("default", "job1") == {f"w{i}": {"v": i} for i in range(20)}


def test_a_bad_report_in_a_burst_rolls_back_alone_and_the_others_apply(
    gm: GM, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup_job(gm)
    gm.hello("node-c")  # takes no part in job1
    gm.idle()
    state = gm.svc.state
    real_put = state.put_worker_info

    def put(ns: str, job: str, worker: str, value: Any) -> bool:
        changed = real_put(ns, job, worker, value)  # written inside the burst, then it fails
        if worker == "poison":
            raise RuntimeError("injected failure after the write")
        return changed

    monkeypatch.setattr(state, "put_worker_info", put)
    wrong_before = rejected(gm, "wrong_node")
    before_a = len(gm.acked_seqs("node-a"))
    release = hold_worker(gm, JOB1)
    good1 = gm.report("node-a", "LifelongLearningJob", "job1", info("good1", 1))
    train = gm.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1))
    wrong = gm.report("node-c", "LifelongLearningJob", "job1", info("intruder", 0))
    poison = gm.report("node-a", "LifelongLearningJob", "job1", info("poison", 0))
    gm.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1), seq=train)  # a copy
    good2 = gm.report("node-a", "LifelongLearningJob", "job1", info("good2", 2))
    release.set()
    gm.idle()
    assert gm.acked_seqs("node-a")[before_a:] == [good1, train, train, good2]  # not the poisoned one
    assert wrong in gm.acked_seqs("node-c")  # rejected, counted and acknowledged as ever
    assert rejected(gm, "wrong_node") == wrong_before + 1
    assert state.worker_info("default", "job1") == {"good1": {"v": 1}, "good2": {"v": 2}}
    assert not state.is_applied("node-a", "ep1", poison)
    assert gm.conditions().count(("Train", "Ready")) == 1
    # the LC resends the poisoned report; once the failure is gone it applies
    monkeypatch.setattr(state, "put_worker_info", real_put)
    gm.report("node-a", "LifelongLearningJob", "job1", info("poison", 0), seq=poison)
    gm.idle()
    assert poison in gm.acked_seqs("node-a")
    assert state.worker_info("default", "job1")["poison"] == {"v": 0}


def test_hellos_and_presence_queued_together_are_one_commit_per_worker_and_synced_after_it(
    gm: GM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of hellos from many nodes (and a presence change among them) is recorded in one
    transaction of the bookkeeping; each node's diff and sync leave after that commit; a hello
    that fails to record rolls back alone (logged and counted) and the others go on."""
    setup_job(gm)  # node-a and node-b hold job1's rows
    gm.idle()
    nodes = ["node-a", "node-b", *[f"n{i:02d}" for i in range(30)], "poison"]
    state = gm.svc.state
    real_hello = state.hello

    def hello(node: str, **kw: Any) -> Any:
        before = real_hello(node, **kw)  # written inside the burst, then it fails
        if node == "poison":
            raise RuntimeError("injected failure after the write")
        return before

    monkeypatch.setattr(state, "hello", hello)
    executor = gm.svc.executor
    releases = [
        hold_worker(gm, ("node", n)) for n in {executor.worker_of(("node", n)): n for n in nodes}.values()
    ]
    workers = {f"gm-{executor.worker_of(('node', n))}" for n in nodes}
    failures = gm.svc.metrics.item_failures.labels(loop="executor")._value.get()
    gm.bus.clear()
    commits: list[tuple[str, set[str]]] = []  # (thread, nodes synced by then) at each COMMIT

    def traced(sql: str) -> None:
        if sql == "COMMIT":
            synced = {e.node for e in gm.bus.envelopes(op=Op.SYNC)}
            commits.append((threading.current_thread().name, synced))

    for n in nodes:
        gm.hello(n, epoch="ep2")
    offline = Envelope.new(node="node-b", kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": "offline"})
    gm.deliver(TOPICS.node_presence("node-b"), offline)  # queued behind node-b's hello, in its run
    state.db.trace(traced)
    try:
        for r in releases:
            r.set()
        gm.idle()
    finally:
        state.db.trace(None)
    burst_commits = [c for c in commits if c[0] in workers]
    assert sorted(c[0] for c in burst_commits) == sorted(workers)  # one commit per worker's run
    for thread, synced_then in burst_commits:  # no node of the run was synced before its commit
        assert not {n for n in nodes if f"gm-{executor.worker_of(('node', n))}" == thread} & synced_then
    synced = {e.node for e in gm.bus.envelopes(op=Op.SYNC)}
    assert synced == set(nodes) - {"poison"}
    sync_a = gm.bus.envelopes("node-a", Op.SYNC)[-1]
    assert "job1" in [r["name"] for r in (sync_a.body or {})["resources"]]
    assert gm.bus.envelopes("node-a", Op.UPSERT, kind="LifelongLearningJob")  # its diff, sent
    info_poison = state.node("poison")
    assert info_poison is None or info_poison.last_hello == 0  # its record rolled back alone
    assert state.node("n00") is not None and state.node("n00").epoch == "ep2"  # type: ignore[union-attr]
    node_b = state.node("node-b")
    assert node_b is not None and node_b.epoch == "ep2" and not node_b.online  # in order: hello, offline
    assert gm.svc.metrics.item_failures.labels(loop="executor")._value.get() == failures + 1


def test_new_jobs_reconciled_together_write_their_first_conditions_in_one_commit_per_worker(
    gm: GM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job controller's first-condition writes of jobs queued next to each other are one
    store commit per executor worker's run; each job is sent to its nodes only after that
    commit; a reconcile that fails rolls back alone and is retried."""
    setup_job(gm)
    gm.idle()
    controller = gm.svc.registry.get("LifelongLearningJob")
    real_write = controller._write_conditions  # type: ignore[union-attr]
    failing = {"poison"}

    def write(key: Any, *args: Any) -> Any:
        written = real_write(key, *args)  # written inside the run, then it fails
        if key[2] in failing:
            raise RuntimeError("injected failure after the write")
        return written

    monkeypatch.setattr(controller, "_write_conditions", write)
    names = [f"j{i:02d}" for i in range(24)] + ["poison"]
    keys = [("LifelongLearningJob", "default", n) for n in names]
    executor = gm.svc.executor
    releases = [hold_worker(gm, k) for k in {executor.worker_of(k): k for k in keys}.values()]
    workers = {f"gm-{executor.worker_of(k)}" for k in keys}
    failures = gm.svc.metrics.item_failures.labels(loop="executor")._value.get()
    for n in names:
        gm.api.apply(job(n))
    wait_for(lambda: executor.pending() >= len(releases) + len(names), what="every reconcile queued")
    commits: list[tuple[str, set[str]]] = []  # (thread, jobs sent by then) at each store COMMIT

    def traced(sql: str) -> None:
        if sql == "COMMIT":
            sent = {e.name for e in gm.bus.envelopes(op=Op.UPSERT, kind="LifelongLearningJob")}
            commits.append((threading.current_thread().name, sent))

    gm.svc.store.db.trace(traced)  # type: ignore[attr-defined]
    try:
        for r in releases:
            r.set()
        wait_for(lambda: all(gm.conditions(n) for n in names[:-1]), what="first conditions")
        wait_for(
            lambda: gm.svc.metrics.item_failures.labels(loop="executor")._value.get() > failures,
            what="the poisoned reconcile counted",
        )
    finally:
        gm.svc.store.db.trace(None)  # type: ignore[attr-defined]
    runs = [c for c in commits if c[0] in workers]
    assert sorted(c[0] for c in runs[: len(workers)]) == sorted(workers)  # one commit per worker's run
    assert len(runs) < len(names) // 2
    for thread, sent_then in runs[: len(workers)]:  # no job of the run was sent before its commit
        assert (
            not {n for n, k in zip(names, keys, strict=True) if f"gm-{executor.worker_of(k)}" == thread}
            & sent_then
        )
    assert all(gm.conditions(n) == [("Train", "Waiting")] for n in names[:-1])

    def sent_now() -> set[str]:
        return {e.name for e in gm.bus.envelopes("node-a", Op.UPSERT, kind="LifelongLearningJob")}

    # sent by the committing thread after its commit's sync, which a reader can see end first
    sent = wait_for(lambda: set(names[:-1]) <= sent_now() and sent_now(), what="every job sent")
    assert gm.conditions("poison") == []  # rolled back alone, not sent
    assert "poison" not in sent
    failing.clear()  # the executor retries it after its backoff
    wait_for(lambda: gm.conditions("poison") == [("Train", "Waiting")], what="poison retried")


def test_an_applied_objects_model_is_left_in_the_cache_as_parsing_the_stored_object_gives(gm: GM) -> None:
    cache = ModelCache()
    api = GMApi(gm.svc.store, gm.svc.state, gm.svc.metrics, models=cache)

    def cached(answer: dict[str, Any]) -> Any:
        stored = answer["object"]
        model = cache.get(parse(stored).key, stored["metadata"]["resourceVersion"])
        assert model is not None and model == parse(stored)
        return model

    cached(api.apply(dataset()))
    cached(api.apply(job()))
    wait_for(lambda: gm.conditions() == [("Train", "Waiting")], what="Train/Waiting")
    changed = job()
    changed["spec"]["outputDir"] = "/out/job1-v2"
    model = cached(api.apply(changed))  # with the status the GM wrote meanwhile
    assert model.status is not None and model.spec.output_dir == "/out/job1-v2"


def skipped_reconciles(gm: GM) -> float:
    return float(gm.svc.metrics.reconciles_skipped.labels(kind="LifelongLearningJob")._value.get())


def test_the_event_of_a_jobs_own_status_write_is_not_reconciled_again(gm: GM) -> None:
    """A new job's reconcile writes its first condition, reads that version and sends it: the
    store event of that write is not reconciled a second time, and the nodes hold that version."""
    setup_job(gm)
    gm.idle()
    stored = gm.job()
    rv = stored["metadata"]["resourceVersion"]
    sent = wait_for(
        lambda: [e for e in gm.bus.envelopes("node-a", Op.UPSERT, "LifelongLearningJob") if e.rv == rv],
        what="the version with the first condition sent",
    )
    assert sent[-1].body is not None and sent[-1].body["object"]["status"] == stored["status"]
    assert skipped_reconciles(gm) == 1


def test_a_burst_whose_commit_fails_is_reconciled_again_and_sent(
    gm: GM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconcile that changes nothing still sends the job's new version; when the commit of its
    burst fails, nothing was sent, and the executor's retry must not take the version as done."""
    setup_job(gm)
    gm.idle()
    db = gm.svc.store.db  # type: ignore[attr-defined]
    real_commit = db._commit
    failed: list[str] = []

    def commit(*, lazy: bool = False) -> None:
        name = threading.current_thread().name
        if not failed and name.startswith("gm-") and name[3:].isdigit():  # an executor's burst
            failed.append(name)
            db._rollback()
            raise sqlite3.OperationalError("injected: disk I/O error")
        real_commit(lazy=lazy)

    monkeypatch.setattr(db, "_commit", commit)
    changed = job()
    changed["spec"]["outputDir"] = "/out/job1-v2"  # a new version whose reconcile writes nothing
    gm.api.apply(changed)
    rv = gm.job()["metadata"]["resourceVersion"]
    wait_for(
        lambda: any(e.rv == rv for e in gm.bus.envelopes("node-a", Op.UPSERT, "LifelongLearningJob")),
        what="the new version sent after the retry",
    )
    assert failed  # the burst's commit did fail once
    assert gm.conditions() == [("Train", "Waiting")]


def test_a_resent_report_across_a_gm_restart_appends_no_second_condition(gm: GM) -> None:
    setup_job(gm)
    gm.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1))
    wait_for(lambda: gm.conditions()[-1] == ("Train", "Starting"), what="Train/Starting")
    seq = gm.report("node-a", "Worker", worker_name("Train", 1), phase("Train", 1, "Running"))
    wait_for(lambda: gm.conditions()[-1] == ("Train", "Running"), what="Train/Running")
    gm.idle()
    before = gm.conditions()
    gm.restart()
    # the LC never got the ack: it resends the same report (same epoch and seq) to the new GM
    gm.report("node-a", "Worker", worker_name("Train", 1), phase("Train", 1, "Running"), seq=seq)
    wait_for(lambda: seq in gm.acked_seqs("node-a"), what="the resend acked")
    gm.idle()
    assert gm.conditions() == before
    # and a resend whose record was pruned is still a duplicate for the state machine
    gm.report("node-a", "Worker", worker_name("Train", 1), phase("Train", 1, "Running"), seq=seq + 100)
    wait_for(lambda: seq + 100 in gm.acked_seqs("node-a"), what="the second resend acked")
    assert gm.conditions() == before


def test_stale_reports_of_an_earlier_round_change_nothing(gm: GM) -> None:
    setup_job(gm)
    gm.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1))
    wait_for(lambda: gm.conditions()[-1] == ("Train", "Starting"), what="Train/Starting")
    gm.report("node-a", "Worker", worker_name("Train", 0), phase("Train", 0, "Succeeded"))
    gm.idle()
    assert gm.conditions()[-1] == ("Train", "Starting")


def test_worker_info_is_kept(gm: GM) -> None:
    setup_job(gm)
    gm.report(
        "node-a",
        "LifelongLearningJob",
        "job1",
        {"event": "workerInfo", "worker": "job1-train-1", "info": {"a": 1}},
    )
    gm.idle()
    assert gm.svc.state.worker_info("default", "job1") == {"job1-train-1": {"a": 1}}


# -- rejected messages ----------------------------------------------------------------------


def rejected(gm: GM, reason: str) -> float:
    return gm.svc.metrics.upstream_rejected.labels(reason=reason)._value.get()


def test_bad_envelopes_are_counted_by_reason_and_never_applied(gm: GM) -> None:
    setup_job(gm)
    topic = TOPICS.up("node-a", "LifelongLearningJob", "default", "job1")
    # node differs from the topic's node
    env = Envelope.new(
        node="node-b", kind="LifelongLearningJob", ns="default", name="job1", op=Op.REPORT, seq=1,
        body=ready("Train", 1),
    )  # fmt: skip
    gm.deliver(topic, env)
    gm.deliver(topic, b"\xc1garbage")
    gm.deliver(topic, b"{" + b" " * (300 * 1024) + b"}")
    mismatch = Envelope.new(
        node="node-a", kind="LifelongLearningJob", ns="default", name="job1", op=Op.REPORT, seq=2, body={}
    )
    gm.deliver(TOPICS.up("node-a", "Dataset", "default", "job1"), mismatch)
    gm.deliver(TOPICS.up("node-a", "Nope", "default", "x"), Envelope.new(
        node="node-a", kind="Nope", ns="default", name="x", op=Op.REPORT, seq=3, body={}))  # fmt: skip
    bogus = gm.report("node-a", "LifelongLearningJob", "job1", {"event": "bogus"})
    gm.report("node-a", "LifelongLearningJob", "nojob", ready("Train", 1))
    gm.deliver(TOPICS.up("node-z", "Dataset", "default", "ds1"), Envelope.new(
        node="node-z", kind="Dataset", ns="default", name="ds1", op=Op.REPORT, seq=1, body={}))  # fmt: skip
    gm.deliver("t/v1/node/node-a/sideways/x", b"{}")
    gm.idle()
    assert rejected(gm, "identity") == 1
    assert rejected(gm, "decode") == 1
    assert rejected(gm, "too_large") == 1
    assert rejected(gm, "topic_mismatch") == 1
    assert rejected(gm, "unknown_kind") == 1
    assert rejected(gm, "invalid") == 1  # a body the models refuse ...
    wait_for(lambda: bogus in gm.acked_seqs("node-a"), what="the refused report acked")  # ... is acked
    assert rejected(gm, "unknown_resource") == 1
    assert rejected(gm, "unknown_node") == 1
    assert rejected(gm, "topic") == 1
    assert gm.conditions() == [("Train", "Waiting")]
    # and the GM still works
    gm.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1))
    wait_for(lambda: gm.conditions()[-1] == ("Train", "Starting"), what="Train/Starting")
    assert b"lifelong_gm_upstream_rejected_total" in gm.svc.metrics.render()


# -- validation at apply ----------------------------------------------------------------------


def ready_condition(gm: GM, name: str = "ds1") -> dict[str, Any] | None:
    obj = gm.svc.store.get("Dataset", "default", name)
    assert obj is not None
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == "Ready"), None)


def test_applying_the_same_object_is_unchanged_whatever_status_the_controllers_wrote(gm: GM) -> None:
    """A status written between two applies bumps the resourceVersion; the second apply is
    still "unchanged" (it used to say "configured" when a controller's status update won the
    race, as the Dataset's WaitingForNode condition did in a full run)."""
    assert gm.api.apply(dataset())["result"] == "created"
    store = gm.api.store
    real_get = store.get

    def get_then_a_controller_writes(kind: str, ns: str, name: str) -> Any:
        found = real_get(kind, ns, name)  # what apply reads first ...
        store.update_status(kind, ns, name, {"numberOfSamples": 3})  # ... then a controller wins
        return found

    store.get = get_then_a_controller_writes  # type: ignore[method-assign]
    try:
        assert gm.api.apply(dataset())["result"] == "unchanged"
    finally:
        store.get = real_get  # type: ignore[method-assign]
    labelled = dataset()
    labelled["metadata"]["labels"] = {"team": "a"}
    assert gm.api.apply(labelled)["result"] == "configured"


def test_apply_refuses_missing_datasets_and_bad_fields_but_not_unknown_nodes(gm: GM) -> None:
    with pytest.raises(ValidationError, match=r"spec\.dataset\.name: Dataset default/ds1 does not exist"):
        gm.api.apply(job())
    assert gm.api.apply(dataset())["result"] == "created"  # node-a has never said hello
    assert gm.api.apply(dataset())["result"] == "unchanged"
    changed = dataset()
    changed["spec"]["url"] = "/data/other.txt"
    assert gm.api.apply(changed)["result"] == "configured"
    with pytest.raises(ValidationError, match=r"spec\.outputDir"):
        bad = job()
        del bad["spec"]["outputDir"]
        gm.api.apply(bad)
    assert gm.svc.store.list("LifelongLearningJob") == []
    assert gm.api.apply(job())["result"] == "created"  # node-a and node-b unknown: it waits


@pytest.mark.parametrize("where", ["dataset", "template"])
def test_apply_refuses_the_reserved_node_name_gm(gm: GM, where: str) -> None:
    gm.api.apply(dataset())
    obj = dataset(node="gm") if where == "dataset" else job(deploy="gm")
    field = "spec.nodeName" if where == "dataset" else r"deploySpec\.template\.spec\.nodeName"
    with pytest.raises(ValidationError, match=field + r": node name 'gm' is reserved"):
        gm.api.apply(obj)


def test_a_dataset_and_job_for_an_unseen_node_wait_for_it_then_go_to_it_at_its_hello(gm: GM) -> None:
    gm.api.apply(dataset())
    gm.api.apply(job())
    wait_for(lambda: gm.conditions() == [("Train", "Waiting")], what="Train/Waiting")
    wait_for(lambda: ready_condition(gm) is not None, what="the dataset's Ready condition")
    cond = ready_condition(gm)
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("False", "WaitingForNode")
    assert "node 'node-a' has not said hello" in cond["message"]
    described = gm.api.describe("LifelongLearningJob", "default", "job1")
    assert [(w["node"], w["reason"]) for w in described["waiting"]] == [
        ("node-a", "WaitingForNode"),
        ("node-b", "WaitingForNode"),
    ]
    assert [w["node"] for w in gm.api.describe("Dataset", "default", "ds1")["waiting"]] == ["node-a"]
    assert gm.bus.envelopes("node-a", Op.UPSERT) == []  # nothing is sent to a node never seen

    gm.hello("node-a")
    gm.idle()
    sent = {(e.kind, e.name) for e in gm.bus.envelopes("node-a", Op.UPSERT)}
    assert sent == {("Dataset", "ds1"), ("LifelongLearningJob", "job1")}  # its hello's diff
    assert [w["node"] for w in gm.api.describe("LifelongLearningJob", "default", "job1")["waiting"]] == [
        "node-b"
    ]
    assert gm.api.describe("Dataset", "default", "ds1")["waiting"] == []
    # The node's first report replaces WaitingForNode with what it found.
    gm.report("node-a", "Dataset", "ds1", {"numberOfSamples": 3, "updateTime": "2026-01-01T00:00:01Z"})
    gm.idle()
    cond = ready_condition(gm)
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "Counted")


def test_dataset_reports_carry_the_edge_state_into_the_ready_condition(gm: GM) -> None:
    gm.hello("node-a")
    gm.idle()
    gm.api.apply(dataset())
    gm.idle()
    assert ready_condition(gm) is None  # a known node: nothing to wait for, nothing reported yet

    def report(second: int, count: int, **extra: Any) -> dict[str, Any]:
        gm.report(
            "node-a",
            "Dataset",
            "ds1",
            {"numberOfSamples": count, "updateTime": f"2026-01-01T00:00:{second:02d}Z", **extra},
        )
        gm.idle()
        cond = ready_condition(gm)
        assert cond is not None
        return cond

    missing = report(1, 0, state="missing", message="/data/ds.txt does not exist")
    assert (missing["status"], missing["reason"]) == ("False", "FileMissing")
    assert "/data/ds.txt does not exist" in missing["message"] and "node-a" in missing["message"]
    since = missing["lastTransitionTime"]
    unreadable = report(2, 0, state="unreadable", message="/data/ds.txt: Permission denied")
    assert (unreadable["status"], unreadable["reason"]) == ("False", "Unreadable")
    assert "Permission denied" in unreadable["message"]
    assert unreadable["lastTransitionTime"] == since  # still False: the transition time stays
    ok = report(3, 7, state="ok")
    assert (ok["status"], ok["reason"]) == ("True", "Counted") and "7 samples" in ok["message"]
    assert ok["lastTransitionTime"] != since
    status = gm.svc.store.get("Dataset", "default", "ds1")["status"]  # type: ignore[index]
    assert status["numberOfSamples"] == 7 and len(status["conditions"]) == 1
    # An older LC sends no state: what it counted is ok. A newer LC's unknown state: Unknown.
    assert report(4, 8)["reason"] == "Counted"
    future = report(5, 8, state="archived", message="moved to cold storage", extra="ignored")
    assert (future["status"], future["reason"]) == ("Unknown", "UnknownState")
    assert "'archived'" in future["message"]
    # An older report (coalescing, a resend) changes nothing.
    stale = report(1, 0, state="missing", message="old")
    assert stale == future


def test_delete_node_forgets_it_and_its_datasets_wait_for_it_again(gm: GM) -> None:
    api = GMApi(gm.svc.store, gm.svc.state, gm.svc.metrics, forget_node=gm.svc.forget_node)
    with pytest.raises(NotFound, match='node "node-a" not found'):
        api.delete_node("node-a")
    setup_job(gm)
    gm.report("node-a", "Dataset", "ds1", {"numberOfSamples": 3, "updateTime": "2026-01-01T00:00:01Z"})
    gm.idle()
    assert gm.svc.state.applied_count("node-a") == 1
    with pytest.raises(Conflict, match="node node-a is online; stop its LC first"):
        api.delete_node("node-a")
    gm.deliver(
        TOPICS.node_presence("node-a"),
        Envelope.new(node="node-a", kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": "offline"}),
    )
    gm.idle()
    gm.svc.delivery.on_ack(
        "node-a",
        [
            Applied(kind=r.kind, ns=r.ns, name=r.name, rv=r.rv, op="upsert")
            for r in gm.svc.state.down_rows("node-a")
        ],
    )
    assert all(r.acked for r in gm.svc.state.down_rows("node-a"))

    assert api.delete_node("node-a") == {"result": "deleted", "node": "node-a"}
    gm.idle()
    assert gm.svc.state.node("node-a") is None
    assert [n["node"] for n in api.nodes()] == ["node-b"]
    assert gm.svc.state.applied_count("node-a") == 0
    rows = gm.svc.state.down_rows("node-a")  # what it should hold stays, unacknowledged
    assert {r.key for r in rows} == {
        ("Dataset", "default", "ds1"),
        ("LifelongLearningJob", "default", "job1"),
    }
    assert not any(r.acked for r in rows)
    cond = ready_condition(gm)
    assert cond is not None and cond["reason"] == "WaitingForNode"
    assert gm.svc.store.get("LifelongLearningJob", "default", "job1") is not None  # the job stays
    # Its reports are from an unknown node until it says hello again (not acknowledged).
    gm.bus.clear()
    gm.report("node-a", "Dataset", "ds1", {"numberOfSamples": 4, "updateTime": "2026-01-01T00:00:02Z"})
    gm.idle()
    assert gm.acked_seqs("node-a") == []
    gm.hello("node-a", epoch="ep2")
    gm.idle()
    assert {(e.kind, e.name) for e in gm.bus.envelopes("node-a", Op.UPSERT)} == {
        ("Dataset", "ds1"),
        ("LifelongLearningJob", "job1"),
    }


def test_a_retained_online_presence_does_not_make_a_node_online(gm: GM) -> None:
    gm.hello("node-a")
    gm.idle()
    assert gm.svc.state.all_offline() == 1
    online = Envelope.new(node="node-a", kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": "online"})
    gm.svc.intake.on_message(TOPICS.node_presence("node-a"), encode(online), True)
    gm.idle()
    assert [n["online"] for n in gm.api.nodes()] == [False]
    gm.svc.intake.on_message(TOPICS.node_presence("node-a"), encode(online), False)  # live
    gm.idle()
    assert [n["online"] for n in gm.api.nodes()] == [True]


def _post(port: int, body: object) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to the GM API's apply; (status, JSON answer), errors included."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/api/v1/apply", json.dumps(body), {"Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_the_api_validates_into_the_model_and_answers_its_errors_naming_the_field(gm: GM) -> None:
    gm.hello("node-a")
    gm.hello("node-b")
    gm.idle()
    parsed = validate(dataset(), gm.svc.store, gm.svc.state)
    assert isinstance(parsed, Dataset) and parsed.spec.node_name == "node-a"  # the model, not a dict
    server = ApiServer(gm.api, port=0)
    server.start()
    try:
        assert _post(server.port, dataset())[0] == 200
        bad = job()
        bad["spec"]["dataset"]["trainProb"] = 2
        bad["spec"]["trainSpec"]["trigger"]["timer"] = {"start": "25:00", "end": "24:00"}
        code, answer = _post(server.port, bad)
        assert code == 400 and answer["reason"] == "ValidationError"
        assert "spec.dataset.trainProb: Input should be less than or equal to 1" in answer["error"]
        assert "spec.trainSpec.trigger.timer.start: must be a time of day 'HH:MM'" in answer["error"]
        code, answer = _post(server.port, job("j" * 240))
        assert code == 400 and "metadata.name: is 240 characters" in answer["error"]
        assert gm.svc.store.list("LifelongLearningJob") == []
        code, answer = _post(server.port, job())
        assert code == 200 and answer["result"] == "created"
        stored = parse_resource(answer["object"])
        assert isinstance(stored, LifelongLearningJob) and stored.spec == parse_resource(job()).spec
    finally:
        server.stop()


def test_json_codec_and_reports_from_nodes_outside_the_job(tmp_path: Path) -> None:
    g = GM(tmp_path, codec="json")
    try:
        setup_job(g)
        wait_for(lambda: g.bus.envelopes("node-b", Op.UPSERT), what="the job on node-b, JSON-encoded")
        assert g.bus.first_bytes == {b"{"}
        g.hello("node-c")
        g.idle()
        g.report("node-c", "LifelongLearningJob", "job1", ready("Train", 1))
        g.idle()
        assert rejected(g, "wrong_node") == 1
        assert g.conditions() == [("Train", "Waiting")]
    finally:
        g.stop()


def test_a_worker_that_can_never_start_fails_the_stage(gm: GM) -> None:
    gm.hello("node-a")
    gm.idle()
    gm.api.apply(dataset())
    broken = job()
    del broken["spec"]["trainSpec"]["template"]["spec"]["nodeName"]
    gm.svc.store.apply(broken)  # past the API's validation, as a hand-edited store would be
    wait_for(lambda: gm.conditions() == [("Train", "Waiting")], what="Train/Waiting")
    gm.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1))
    wait_for(lambda: ("Train", "Failed") in gm.conditions(), what="Train/Failed")
    conditions = gm.job()["status"]["conditions"]
    at = next(i for i, c in enumerate(conditions) if c["type"] == "Failed")
    failed, retry = conditions[at : at + 2]
    assert failed["reason"] == "StartFailed" and "names no node" in failed["message"]
    # retried like any failed attempt (the spec may be fixed meanwhile), up to the limit
    assert (retry["stage"], retry["type"], retry["reason"]) == ("Train", "Ready", "Retry")
    assert "Train attempt 1 of 7 failed" in retry["message"]


def test_resend_backoff_doubles_up_to_its_cap(gm: GM) -> None:
    down = gm.svc.delivery  # resend_base 0.2, resend_cap 0.4 in this fixture
    assert [down.backoff(n) for n in range(5)] == [0.0, 0.2, 0.4, 0.4, 0.4]
    wider = Delivery(
        GMState(":memory:"), TOPICS, FakeBus().publish, metrics=GMMetrics(), resend_base=2.0, resend_cap=60.0
    )
    assert [wider.backoff(n) for n in (1, 2, 3, 6, 7, 100)] == [2.0, 4.0, 8.0, 60.0, 60.0, 60.0]


# -- one bad item never stops a loop ----------------------------------------------------------

LONG = "j" * 253 + "-train-1"
"""A Worker name of 261 characters (a valid 253-character job name's worker): the envelope refuses it."""


def worker_object(name: str, rv: str = "7") -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Worker",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
        "spec": {"template": template("node-a")},
    }


def presence(gm: GM, node: str, state: str) -> None:
    env = Envelope.new(node=node, kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": state})
    gm.deliver(TOPICS.node_presence(node), env)
    gm.idle()


def dropped(gm: GM, reason: str = "topic") -> float:  # the topic check refuses it first
    return gm.svc.metrics.downstream_dropped.labels(reason=reason)._value.get()


def item_failures(gm: GM, loop: str) -> float:
    return gm.svc.metrics.item_failures.labels(loop=loop)._value.get()


def want_workers(gm: GM, names: list[str], nodes: list[str]) -> None:
    """What the Worker controller does for each Worker object: the nodes should hold it."""
    for name in names:
        gm.svc.delivery.want(("Worker", "default", name), nodes, worker_object(name), include_status=False)


def test_the_resend_loop_drops_an_unsendable_row_and_resends_every_other(gm: GM) -> None:
    gm.hello("node-a")
    gm.hello("node-b")
    gm.idle()
    presence(gm, "node-a", "offline")
    presence(gm, "node-b", "offline")
    names = ["a-good", LONG, "z-good"]  # the poison sorts between the good rows of each node
    want_workers(gm, names, ["node-a", "node-b"])
    assert len(gm.svc.state.down_rows(unacked=True)) == 6
    presence(gm, "node-a", "online")  # back without a hello: only the resend loop sends
    presence(gm, "node-b", "online")
    gm.bus.clear()
    gm.svc.delivery.resend_due(now=10**10)
    for node in ("node-a", "node-b"):
        assert {e.name for e in gm.bus.envelopes(node, Op.UPSERT)} >= {"a-good", "z-good"}
    assert dropped(gm) == 2  # one per node, logged and counted once
    assert gm.svc.state.down_rows(key=("Worker", "default", LONG)) == []  # dropped, not retried
    gm.svc.delivery.resend_due(now=2 * 10**10)
    assert dropped(gm) == 2


def test_a_hello_diff_drops_an_unsendable_row_and_sends_and_syncs_the_rest(gm: GM) -> None:
    gm.hello("node-a")
    gm.idle()
    presence(gm, "node-a", "offline")
    want_workers(gm, ["a-good", LONG, "z-good"], ["node-a"])
    gm.bus.clear()
    gm.hello("node-a")
    gm.idle()
    assert {e.name for e in gm.bus.envelopes("node-a", Op.UPSERT)} == {"a-good", "z-good"}
    sync = gm.bus.envelopes("node-a", Op.SYNC)
    assert len(sync) == 1 and {r["name"] for r in sync[0].body["resources"]} == {"a-good", "z-good"}
    assert dropped(gm) == 1
    assert gm.svc.state.down_rows(key=("Worker", "default", LONG)) == []


def test_an_ack_batch_skips_a_malformed_entry_and_applies_the_others(gm: GM) -> None:
    gm.hello("node-a")
    gm.idle()
    want_workers(gm, ["w1", "w2"], ["node-a"])
    gm.idle()
    sent = {e.name: e for e in gm.bus.envelopes("node-a", Op.UPSERT)}
    entries: list[Any] = [
        {"kind": "Worker", "ns": "default", "name": n, "rv": sent[n].rv, "op": "upsert"} for n in ("w1", "w2")
    ]
    entries.insert(1, {"kind": "Worker", "name": "w9"})  # no ns, no rv
    entries.insert(2, "w3")  # not a map
    ack = Envelope.new(node="node-a", kind=CONTROL_KIND, op=Op.ACK, body={"applied": entries})
    gm.deliver(TOPICS.up_ctl("node-a"), ack)
    gm.idle()
    assert gm.svc.state.unacked_counts().get("node-a", 0) == 0
    assert rejected(gm, "invalid") == 2  # each refused item, by the models at the door


def test_an_unsendable_row_wanted_for_an_online_node_is_dropped_at_once(gm: GM) -> None:
    gm.hello("node-a")
    gm.idle()
    want_workers(gm, [LONG, "z-good"], ["node-a"])
    assert [e.name for e in gm.bus.envelopes("node-a", Op.UPSERT)] == ["z-good"]
    assert dropped(gm) == 1
    assert gm.svc.state.down_rows(key=("Worker", "default", LONG)) == []


# -- the network thread only hands off ---------------------------------------------------------


def test_the_network_thread_never_waits_for_the_bookkeeping(gm: GM) -> None:
    setup_job(gm)
    gm.idle()
    held, release = threading.Event(), threading.Event()

    def hold_the_bookkeeping() -> None:  # as a worker does for a whole hello diff
        with gm.svc.state.transaction():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_bookkeeping)
    holder.start()
    assert held.wait(5)
    handled = threading.Event()

    def network_thread() -> None:
        gm.hello("node-c")
        presence_env = Envelope.new(
            node="node-b", kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": "offline"}
        )
        gm.deliver(TOPICS.node_presence("node-b"), presence_env)
        gm.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1))
        handled.set()

    try:
        threading.Thread(target=network_thread, daemon=True).start()
        assert handled.wait(3), "the network thread waited for a lock a worker held"
    finally:
        release.set()
        holder.join()
    gm.idle()
    node_c = gm.svc.state.node("node-c")
    assert node_c is not None and node_c.epoch == "ep1"  # recorded by a worker afterwards
    node_b = gm.svc.state.node("node-b")
    assert node_b is not None and not node_b.online
    wait_for(lambda: gm.conditions()[-1] == ("Train", "Starting"), what="the report applied")


def test_a_report_right_after_a_hello_is_deduplicated_under_the_new_epoch(gm: GM) -> None:
    setup_job(gm)
    gm.idle()
    ex, release = gm.svc.executor, threading.Event()
    assert ex.worker_of(("node", "node-a")) != ex.worker_of(("LifelongLearningJob", "default", "job1"))
    ex.submit(("node", "node-a"), lambda: release.wait(10) and None)  # the hello's write waits
    gm.hello("node-a", epoch="ep2")
    seq = gm.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1))
    # applied, recorded and acknowledged under ep2 in one burst, while the hello's write waits
    wait_for(lambda: seq in gm.acked_seqs("node-a"), what="applied under ep2")
    node = gm.svc.state.node("node-a")
    assert node is not None and node.epoch == "ep1"  # the hello is not recorded yet
    release.set()
    gm.idle()
    wait_for(lambda: seq in gm.acked_seqs("node-a"), what="the report acked")
    assert [e.body["epoch"] for e in gm.bus.envelopes("node-a", Op.ACK) if seq in e.body["seqs"]] == ["ep2"]
    node = gm.svc.state.node("node-a")
    assert node is not None and node.epoch == "ep2"
    assert gm.svc.state.is_applied("node-a", "ep2", seq)  # the hello's write kept the new epoch's record
    gm.report("node-a", "LifelongLearningJob", "job1", ready("Train", 1), seq=seq)
    wait_for(lambda: gm.acked_seqs("node-a").count(seq) == 2, what="the copy acked")
    assert gm.conditions().count(("Train", "Ready")) == 1


# -- store events: level-triggered reconciles -------------------------------------------------


def test_job_events_waiting_for_their_turn_collapse_into_one_reconcile(gm: GM) -> None:
    setup_job(gm)
    # the event of the first condition's write must be handled before the count starts: an idle
    # executor does not say the store watch has handed it over yet (it is skipped when it comes)
    wait_for(lambda: skipped_reconciles(gm) >= 1, what="the first condition's event handled")
    gm.idle()
    key = ("LifelongLearningJob", "default", "job1")
    ex, release = gm.svc.executor, threading.Event()
    ex.submit(key, lambda: release.wait(10) and None)  # the job's turn is busy
    for i in range(5):
        changed = job()
        changed["spec"]["outputDir"] = f"/out/v{i}"
        gm.api.apply(changed)
    wait_for(lambda: ex.collapsed == 4, what="four waiting events replaced by the newest")
    release.set()
    gm.idle()

    def output_dir_sent() -> str:
        return gm.bus.envelopes("node-b", Op.UPSERT, "LifelongLearningJob")[-1].body["object"]["spec"][
            "outputDir"
        ]

    wait_for(lambda: output_dir_sent() == "/out/v4", what="the newest spec sent")
    assert b"lifelong_gm_work_collapsed_total 4.0" in gm.svc.metrics.render()


def refused(gm: GM, kind: str) -> float | None:
    return gm.svc.metrics.registry.get_sample_value("lifelong_gm_store_refused_total", {"kind": kind})


def test_an_invalid_job_in_the_stores_list_is_refused_counted_failed_once_and_the_others_reconciled(
    tmp_path: Path,
) -> None:
    first = GM(tmp_path)
    try:
        first.hello("node-a")
        first.hello("node-b")
        first.idle()
        first.api.apply(dataset())
        broken = job("broken")
        broken["spec"]["dataset"] = "ds1"  # a string where a map belongs: the models refuse it
        first.svc.store.apply(broken)  # past the API's validation, as an older, buggier GM could have
        first.api.apply(job("good"))
        wait_for(lambda: first.conditions("good") == [("Train", "Waiting")], what="the good job")
        wait_for(lambda: first.conditions("broken") == [("Train", "Failed")], what="the broken job failed")
        first.idle()
        assert refused(first, "LifelongLearningJob") == 1  # once, not again for its own status write
    finally:
        first.stop()
    second = GM(tmp_path)  # its watch starts with the store's full list
    try:
        wait_for(lambda: refused(second, "LifelongLearningJob") == 1, what="the broken job counted")
        second.report("node-a", "LifelongLearningJob", "good", ready("Train", 1))
        wait_for(lambda: second.conditions("good")[-1] == ("Train", "Starting"), what="the good job driven")
        second.idle()
        assert second.conditions("broken") == [("Train", "Failed")]  # one Failed, not one per GM
        failed = second.job("broken")["status"]["conditions"][-1]
        assert failed["reason"] == "Invalid"
        assert "spec.dataset: Input should be a mapping" in failed["message"]
        assert second.svc.executor.pending_retries() == 0  # refused, not retried forever
        assert refused(second, "LifelongLearningJob") == 1
        assert all(env.name != "broken" for env in second.bus.envelopes("node-a", Op.UPSERT))
    finally:
        second.stop()


# -- the delivery's locks are per node -----------------------------------------------------------


class HoldingBus(FakeBus):
    """A FakeBus whose first publish to ``node``'s topics blocks until ``release`` is set (the
    seam: Delivery publishes through the callable it is given)."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node
        self.holding, self.release = threading.Event(), threading.Event()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> object:
        if f"/node/{self.node}/" in topic and not self.holding.is_set():
            self.holding.set()
            assert self.release.wait(10)
        return super().publish(topic, payload, qos, retain)


def ds_object(name: str, node: str, rv: str) -> dict[str, Any]:
    obj = dataset(name, node)
    obj["metadata"].update(namespace="default", resourceVersion=rv)
    return obj


def online_delivery(bus: FakeBus, *nodes: str) -> Delivery:
    state = GMState(":memory:")
    for node in nodes:
        state.hello(node, agent="t", epoch="e", boot="b", low_seq=None)
        state.set_online(node, True)
    return Delivery(state, TOPICS, bus.publish, metrics=GMMetrics())


def test_delivery_work_for_other_nodes_goes_on_while_one_nodes_is_held() -> None:
    bus = HoldingBus("node-a")
    delivery = online_delivery(bus, "node-a", "node-b")
    held = threading.Thread(
        target=delivery.want, args=(("Dataset", "default", "a1"), ["node-a"], ds_object("a1", "node-a", "1"))
    )
    held.start()
    try:
        assert bus.holding.wait(5)  # node-a's change is held while it publishes
        done = threading.Event()

        def other_node() -> None:
            delivery.want(("Dataset", "default", "b1"), ["node-b"], ds_object("b1", "node-b", "2"))
            delivery.on_hello("node-b", [])
            delivery.on_ack("node-b", [Applied(kind="Dataset", ns="default", name="b1", rv="2", op="upsert")])
            delivery.resend_due(now=10**10)
            done.set()

        threading.Thread(target=other_node, daemon=True).start()
        assert done.wait(3), "node-b's work waited for node-a's"
        assert [e.op for e in bus.envelopes("node-b")] == [Op.UPSERT, Op.UPSERT, Op.SYNC]  # b1, its hello
        assert delivery.state.unacked_counts().get("node-b", 0) == 0
    finally:
        bus.release.set()
        held.join()
    assert [e.name for e in bus.envelopes("node-a", Op.UPSERT)] == ["a1"]


def test_a_change_for_a_node_waits_for_its_hello_diff_so_the_sync_never_drops_it() -> None:
    bus = HoldingBus("node-a")
    delivery = online_delivery(bus, "node-a")
    delivery.state.set_online("node-a", False)  # a1 is recorded, not sent: the hello sends it
    delivery.want(("Dataset", "default", "a1"), ["node-a"], ds_object("a1", "node-a", "1"))
    delivery.state.set_online("node-a", True)
    hello = threading.Thread(target=delivery.on_hello, args=("node-a", []))
    hello.start()
    try:
        assert bus.holding.wait(5)  # the diff publishes a1 (its rows read), its sync not yet sent
        change = threading.Thread(
            target=delivery.want,
            args=(("Dataset", "default", "a2"), ["node-a"], ds_object("a2", "node-a", "2")),
            daemon=True,
        )
        change.start()
        with pytest.raises(DeadlineExceeded):  # a2 must not go out before the sync: give it 0.5 s
            wait_for(lambda: bus.envelopes("node-a", Op.UPSERT), timeout=0.5)
    finally:
        bus.release.set()
        hello.join()
    change.join(5)
    sent = [(e.op, e.name or [r["name"] for r in e.body["resources"]]) for e in bus.envelopes("node-a")]
    assert sent == [(Op.UPSERT, "a1"), (Op.SYNC, ["a1"]), (Op.UPSERT, "a2")]


# -- the LC refuses a downstream object ----------------------------------------------------------


def test_an_object_the_node_refused_is_acked_counted_logged_once_and_not_resent(
    gm: GM, caplog: pytest.LogCaptureFixture
) -> None:
    gm.hello("node-a")
    gm.idle()
    want_workers(gm, ["w1", "w2"], ["node-a"])
    gm.idle()
    sent = {e.name: e for e in gm.bus.envelopes("node-a", Op.UPSERT)}
    why = "upsert body: object.spec.template: Input should be a valid dictionary"
    refused = {
        "kind": "Worker",
        "ns": "default",
        "name": "w1",
        "rv": sent["w1"].rv,
        "op": "upsert",
        "refused": why,
    }
    good = {"kind": "Worker", "ns": "default", "name": "w2", "rv": sent["w2"].rv, "op": "upsert"}
    ack = Envelope.new(node="node-a", kind=CONTROL_KIND, op=Op.ACK, body={"applied": [refused, good]})
    with caplog.at_level(logging.WARNING, logger="lifelong.cloud"):
        gm.deliver(TOPICS.up_ctl("node-a"), ack)
        gm.deliver(TOPICS.up_ctl("node-a"), ack)  # the same refusal again: counted, not logged again
        gm.idle()
    assert gm.svc.state.unacked_counts().get("node-a", 0) == 0
    assert gm.svc.metrics.downstream_refused.labels(kind="Worker")._value.get() == 2
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "node-a" in lines[0] and "Worker/default/w1" in lines[0] and why in lines[0]
    gm.bus.clear()
    gm.svc.delivery.resend_due(now=10**10)
    assert not gm.bus.envelopes("node-a")  # acked: never resent


@pytest.mark.parametrize("parted", [False, True], ids=["whole-hello", "hello-in-parts"])
def test_refused_bodies_are_acked_counted_each_and_logged_once_per_node_and_reason(
    gm: GM, caplog: pytest.LogCaptureFixture, parted: bool
) -> None:
    setup_job(gm)
    bad = {"numberOfSamples": -1, "updateTime": "2026-01-01T00:00:00Z"}
    with caplog.at_level(logging.WARNING, logger="lifelong.cloud"):
        seqs = [gm.report("node-a", "Dataset", "ds1", bad) for _ in range(3)]
        gm.report("node-b", "Dataset", "ds1", bad)  # another node: its own first warning
        gm.idle()
        warned = [r.getMessage() for r in caplog.records if "(invalid)" in r.getMessage()]
        assert len(warned) == 2 and "node-a/Dataset/default/ds1" in warned[0], warned
        assert "numberOfSamples" in warned[0]  # the field the model refused
        gm.hello("node-a", epoch="ep1", parted=parted)  # a new connection: its first refusal is logged again
        gm.report("node-a", "Dataset", "ds1", bad)
        gm.idle()
    assert len([r for r in caplog.records if "(invalid)" in r.getMessage()]) == 3
    assert rejected(gm, "invalid") == 5
    wait_for(lambda: set(seqs) <= set(gm.acked_seqs("node-a")), what="the refused reports acked")
    assert "numberOfSamples" not in (gm.svc.store.get("Dataset", "default", "ds1") or {}).get("status", {})
