"""The kubectl-like client commands against a real GM HTTP API (the GM's bus is a recorder)."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.waiting import free_port, wait_for

from lifelong.__main__ import main
from lifelong.client.api import Client
from lifelong.cloud.gmstate import GMState
from lifelong.cloud.service import GMService, GMSettings
from lifelong.common.api import MAX_JOB_NAME
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.errors import ValidationError
from lifelong.common.topics import Topics

DATASET = """\
apiVersion: sedna.io/v1alpha1
kind: Dataset
metadata:
  name: ds1
spec:
  url: /data/ds.txt
  format: txt
  nodeName: node-a
"""

JOB = """\
apiVersion: sedna.io/v1alpha1
kind: LifelongLearningJob
metadata:
  name: job1
spec:
  dataset: {name: ds1, trainProb: 0.8}
  trainSpec:
    template: {spec: {nodeName: node-a, containers: [{name: t, image: x, command: ["true"]}]}}
    trigger:
      checkPeriodSeconds: 60
      timer: {start: "02:00", end: "24:00"}
      condition: {operator: ">", threshold: 500, metric: num_of_samples}
  evalSpec:
    template: {spec: {nodeName: node-a, containers: [{name: e, image: x, command: ["true"]}]}}
  deploySpec:
    template: {spec: {nodeName: node-a, containers: [{name: d, image: x, command: ["true"]}]}}
  outputDir: /out/job1
"""


class NoBus:
    def publish(self, *args: Any, **kwargs: Any) -> object:
        return object()

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass


def say_hello(svc: GMService, node: str, outbox: dict[str, Any]) -> None:
    from lifelong.common.codec import encode

    hello = Envelope.new(
        node=node,
        kind=CONTROL_KIND,
        op=Op.HELLO,
        body={"agent": "x", "epoch": "e", "boot": "b", "resources": [], "outbox": outbox},
    )
    svc.intake.on_message(Topics("c/v1").up_ctl(node), encode(hello), False)
    assert svc.executor.wait_idle(10)  # the hello is recorded on the node's work queue


@pytest.fixture
def gm(tmp_path: Path) -> Iterator[GMService]:
    svc = GMService(
        GMSettings(
            broker="mqtt://127.0.0.1:1", store=f"sqlite:{tmp_path / 's.db'}", api_port=0, prefix="c/v1"
        ),
        bus=NoBus(),
    )
    svc.start_controllers()
    say_hello(svc, "node-a", {})
    yield svc
    svc.stop()


@pytest.fixture
def server(gm: GMService) -> str:
    return f"http://127.0.0.1:{gm.api_port}"


def run(capsys: pytest.CaptureFixture[str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    if stdin is not None:
        old = sys.stdin
        sys.stdin = io.StringIO(stdin)
    try:
        code = main(list(args))
    finally:
        if stdin is not None:
            sys.stdin = old
    out = capsys.readouterr()
    return code, out.out, out.err


def test_apply_get_describe_delete(server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "1-job.yaml").write_text(JOB)
    (folder / "0-ds.yaml").write_text(DATASET)
    code, out, _ = run(capsys, "apply", "-f", str(folder), "--server", server)
    assert code == 0
    assert out.splitlines() == ["dataset.sedna.io/ds1 created", "lifelonglearningjob.sedna.io/job1 created"]
    code, out, _ = run(capsys, "apply", "-f", "-", "--server", server, stdin=DATASET)
    assert (code, out) == (0, "dataset.sedna.io/ds1 unchanged\n")
    code, out, _ = run(
        capsys, "apply", "-f", "-", "--server", server, stdin=DATASET.replace("ds.txt", "b.txt")
    )
    assert (code, out) == (0, "dataset.sedna.io/ds1 configured\n")

    code, out, _ = run(capsys, "get", "ll", "--server", server)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "STAGE", "STATUS", "AGE"]
    assert lines[1].split()[0] == "job1"
    code, out, _ = run(capsys, "get", "ll", "job1", "-o", "wide", "--server", server)
    assert "ROUND" in out.splitlines()[0] and "node-a" in out
    code, out, _ = run(capsys, "get", "ds", "ds1", "-o", "yaml", "--server", server)
    assert yaml.safe_load(out)["spec"]["url"] == "/data/b.txt"
    code, out, _ = run(capsys, "get", "model", "-o", "json", "--server", server)
    assert json.loads(out) == {"apiVersion": "v1", "kind": "List", "items": []}
    code, out, _ = run(capsys, "get", "nodes", "--server", server)
    assert "node-a" in out and "Online" in out

    code, out, _ = run(capsys, "describe", "ll", "job1", "--server", server)
    assert code == 0 and "Name:              job1" in out and "Conditions:" in out and "Delivery:" in out

    code, out, _ = run(capsys, "delete", "-f", str(folder), "--server", server)
    assert code == 0
    assert out.splitlines() == [
        'lifelonglearningjob.sedna.io "job1" deleted',
        'dataset.sedna.io "ds1" deleted',
    ]
    code, _, err = run(capsys, "delete", "ll", "job1", "--server", server)
    assert code == 1 and "NotFound" in err
    code, _, err = run(capsys, "delete", "ll", "job1", "--ignore-not-found", "--server", server)
    assert code == 0


def test_errors_are_one_line_with_exit_codes(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "get", "ll", "nope", "--server", server)
    assert code == 1 and err.startswith("error:") and "not found" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "apply", "-f", "-", "--server", server, stdin=JOB)
    assert code == 2 and "Dataset default/ds1 does not exist" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(DATASET.replace("format: txt", "format: exe"))
    code, _, err = run(capsys, "apply", "-f", str(bad), "--server", server)
    assert code == 2 and str(bad) in err and "spec.format" in err
    code, _, err = run(capsys, "apply", "-f", "-", "--server", server, stdin=DATASET.replace("node-a", "gm"))
    assert code == 2 and "node name 'gm' is reserved" in err
    code, _, err = run(capsys, "get", "pods", "--server", server)
    assert code == 2 and "resource type" in err
    code, _, err = run(capsys, "get", "ll", "--server", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "cannot reach the GM" in err
    code, _, err = run(capsys, "apply", "-f", str(tmp_path / "missing.yaml"), "--server", server)
    assert code == 2 and "does not exist" in err


def test_the_gm_api_refuses_a_job_name_too_long_for_its_worker_names(server: str) -> None:
    """A name Kubernetes accepts (253) but whose worker names ({job}-deploy-{round}) would not
    fit: the GM's API answers 400 naming metadata.name and the limit, and stores nothing."""
    client = Client(server)
    client.apply(yaml.safe_load(DATASET))
    job = yaml.safe_load(JOB)
    job["metadata"]["name"] = "j" * 253
    with pytest.raises(ValidationError) as info:
        client.apply(job)  # the HTTP client, not the CLI's local check
    assert "metadata.name" in str(info.value) and f"at most {MAX_JOB_NAME}" in str(info.value)
    assert client.list("LifelongLearningJob", None) == []
    job["metadata"]["name"] = "j" * MAX_JOB_NAME
    assert client.apply(job)["result"] == "created"


def test_nodes_and_describe_show_the_outbox_of_the_last_hello(
    gm: GMService, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "nodes", "--server", server)
    header, row = out.splitlines()[:2]
    assert code == 0 and header.split()[-1] == "OUTBOX@HELLO" and row.split()[-1] == "<unknown>"

    say_hello(gm, "node-a", {"depth": 7, "lowSeq": 12, "nextSeq": 19})

    def depth() -> int | None:
        node = gm.state.node("node-a")
        return None if node is None else node.outbox_depth

    wait_for(lambda: depth() == 7, what="the hello's outbox recorded")
    code, out, _ = run(capsys, "nodes", "--server", server)
    header, row = out.splitlines()[:2]
    assert code == 0 and row.split()[0] == "node-a" and row.split()[-1] == "7"
    code, out, _ = run(capsys, "nodes", "-o", "json", "--server", server)
    assert json.loads(out)["items"][0]["outbox"] == {"depth": 7, "lowSeq": 12, "nextSeq": 19}
    with pytest.raises(SystemExit) as exited:
        run(capsys, "nodes", "--help")
    out = capsys.readouterr().out
    assert exited.value.code == 0 and "OUTBOX@HELLO" in out and "last hello" in out

    run(capsys, "apply", "-f", "-", "--server", server, stdin=DATASET)
    run(capsys, "apply", "-f", "-", "--server", server, stdin=JOB)
    code, out, _ = run(capsys, "describe", "ll", "job1", "--server", server)
    involved = out.split("Nodes Involved:")[1].splitlines()
    assert code == 0 and involved[1].split()[-1] == "OUTBOX@HELLO"
    assert involved[2].split()[0] == "node-a" and involved[2].split()[-1] == "7"


def test_gm_state_adds_the_outbox_columns_to_an_older_database(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE nodes (node TEXT PRIMARY KEY, online INTEGER NOT NULL DEFAULT 0, "
        "agent TEXT NOT NULL DEFAULT '', epoch TEXT NOT NULL DEFAULT '', boot TEXT NOT NULL DEFAULT '', "
        "last_hello REAL NOT NULL DEFAULT 0, last_seen REAL NOT NULL DEFAULT 0);"
        "INSERT INTO nodes (node, online, last_hello) VALUES ('node-old', 1, 5.0);"
    )
    old.commit()
    old.close()
    state = GMState(path)
    try:
        before = state.node("node-old")
        assert before is not None and before.last_hello == 5.0 and before.outbox_depth is None
        state.hello("node-old", agent="a", epoch="e", boot="b", low_seq=3, depth=2, next_seq=5)
        after = state.node("node-old")
        assert after is not None and (after.outbox_depth, after.outbox_low, after.outbox_next) == (2, 3, 5)
    finally:
        state.close()
    GMState(path).close()  # reopening an already migrated database is a no-op


def test_delete_node(gm: GMService, server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "delete", "node", "node-a", "--server", server)
    assert code == 1 and "node node-a is online; stop its LC first" in err and len(err.splitlines()) == 1
    gm.state.set_online("node-a", False)
    code, out, _ = run(capsys, "delete", "node", "node-a", "--server", server)
    assert code == 0 and out == 'node "node-a" deleted\n'
    assert gm.state.node("node-a") is None
    code, _, err = run(capsys, "delete", "node", "node-a", "--server", server)
    assert code == 1 and 'node "node-a" not found' in err
    code, _, _ = run(capsys, "delete", "node", "node-a", "--ignore-not-found", "--server", server)
    assert code == 0
