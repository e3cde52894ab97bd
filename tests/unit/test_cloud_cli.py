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
from harness.waiting import free_port

from lifelong.__main__ import main
from lifelong.cloud.service import GMService, GMSettings
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
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


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    svc = GMService(
        GMSettings(
            broker="mqtt://127.0.0.1:1", store=f"sqlite:{tmp_path / 's.db'}", api_port=0, prefix="c/v1"
        )
    )
    svc.bus = NoBus()  # type: ignore[assignment]
    svc.start_controllers()
    hello = Envelope.new(
        node="node-a",
        kind=CONTROL_KIND,
        op=Op.HELLO,
        body={"agent": "x", "epoch": "e", "boot": "b", "resources": [], "outbox": {}},
    )
    from lifelong.common.codec import encode

    svc.upstream.on_message(Topics("c/v1").up_ctl("node-a"), encode(hello), False)
    yield f"http://127.0.0.1:{svc.api_port}"
    svc.stop()


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
    code, _, err = run(
        capsys, "apply", "-f", "-", "--server", server, stdin=DATASET.replace("node-a", "node-x")
    )
    assert code == 2 and "node 'node-x' is not known" in err
    code, _, err = run(capsys, "get", "pods", "--server", server)
    assert code == 2 and "resource type" in err
    code, _, err = run(capsys, "get", "ll", "--server", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "cannot reach the GM" in err
    code, _, err = run(capsys, "apply", "-f", str(tmp_path / "missing.yaml"), "--server", server)
    assert code == 2 and "does not exist" in err
