"""The kubectl-like client commands against a real GM HTTP API (the GM's bus is a recorder)."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.waiting import DeadlineExceeded, free_port, wait_for

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


# -- kubectl habits: KIND/NAME, KIND1,KIND2, -o name|jsonpath, -l, describe KIND, delete --all, -w --


def dataset(name: str, labels: dict[str, str] | None = None, namespace: str = "default") -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load(DATASET)
    obj["metadata"] = {"name": name, "namespace": namespace, **({"labels": labels} if labels else {})}
    return obj


def test_get_takes_kind_slash_name_several_kinds_and_prints_names_and_jsonpath(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Client(server)
    client.apply(yaml.safe_load(DATASET))
    client.apply(yaml.safe_load(JOB))

    code, out, _ = run(capsys, "get", "ll/job1", "--server", server)
    assert code == 0 and out.splitlines()[0].split() == ["NAME", "STAGE", "STATUS", "AGE"]
    assert out.splitlines()[1].split()[0] == "job1"
    code, out, _ = run(capsys, "get", "ll/job1", "ds/ds1", "-o", "name", "--server", server)
    assert (code, out) == (0, "lifelonglearningjob.sedna.io/job1\ndataset.sedna.io/ds1\n")
    code, out, _ = run(capsys, "get", "ll/job1", "-o", "json", "--server", server)
    assert json.loads(out)["metadata"]["name"] == "job1"  # one object, not a List

    code, out, _ = run(capsys, "get", "ll,ds", "--server", server)
    tables = out.split("\n\n")
    assert code == 0 and len(tables) == 2
    assert tables[0].splitlines()[0].split()[:2] == ["NAME", "STAGE"]
    assert tables[0].splitlines()[1].split()[0] == "lifelonglearningjob.sedna.io/job1"
    assert tables[1].splitlines()[0].split()[:2] == ["NAME", "NODE"]
    assert tables[1].splitlines()[1].split()[0] == "dataset.sedna.io/ds1"
    code, out, _ = run(capsys, "get", "ds,ll", "-o", "name", "--server", server)
    assert out == "dataset.sedna.io/ds1\nlifelonglearningjob.sedna.io/job1\n"
    code, out, _ = run(capsys, "get", "nodes", "-o", "name", "--server", server)
    assert (code, out) == (0, "node/node-a\n")

    code, out, _ = run(capsys, "get", "ll,ds", "-o", "jsonpath={.items[*].metadata.name}", "--server", server)
    assert (code, out) == (0, "job1 ds1")
    template = 'jsonpath={range .items[*]}{.kind}/{.metadata.name}{"\\n"}{end}'
    code, out, _ = run(capsys, "get", "ll,ds", "-o", template, "--server", server)
    assert (code, out) == (0, "LifelongLearningJob/job1\nDataset/ds1\n")
    code, out, _ = run(capsys, "get", "ds", "ds1", "-o", "jsonpath={.spec.nodeName}", "--server", server)
    assert (code, out) == (0, "node-a")

    code, _, err = run(capsys, "get", "ll", "-o", "jsonpath={.items[", "--server", server)
    assert code == 2 and err.startswith("error: error parsing jsonpath") and len(err.splitlines()) == 1
    code, _, err = run(capsys, "get", "ll", "-o", "table", "--server", server)
    assert code == 2 and "allowed formats are" in err
    code, _, err = run(capsys, "get", "ll/job1", "ds1", "--server", server)
    assert code == 2 and "resource/name form" in err
    code, _, err = run(capsys, "get", "ll/nope", "--server", server)
    assert code == 1 and "not found" in err


def test_label_selectors_filter_get_describe_and_delete(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Client(server)
    client.apply(dataset("ds-a", {"app": "atcii", "tier": "edge"}))
    client.apply(dataset("ds-b", {"app": "atcii"}))
    client.apply(dataset("ds-c", {"app": "demo"}))
    client.apply(dataset("ds-d"))

    def names(*selector: str) -> list[str]:
        code, out, err = run(capsys, "get", "ds", *selector, "-o", "name", "--server", server)
        assert code == 0, err
        return [line.split("/")[1] for line in out.splitlines()]

    assert names("-l", "app=atcii") == ["ds-a", "ds-b"]
    assert names("-l", "app!=atcii") == ["ds-c", "ds-d"]
    assert names("-l", "tier") == ["ds-a"]
    assert names("-l", "!app") == ["ds-d"]
    assert names("-l", "app=atcii,!tier") == ["ds-b"]
    assert names("--selector", "app in (demo, atcii),tier notin (edge)") == ["ds-b", "ds-c"]
    code, out, err = run(capsys, "get", "ds", "-l", "app=none", "--server", server)
    assert (code, out, err) == (0, "", "No resources found in default namespace.\n")

    code, out, _ = run(capsys, "describe", "ds", "-l", "app=atcii", "--server", server)
    assert code == 0 and [line.split()[1] for line in out.splitlines() if line.startswith("Name:")] == [
        "ds-a",
        "ds-b",
    ]

    code, out, _ = run(capsys, "delete", "ds", "-l", "app=atcii", "--server", server)
    assert (code, out) == (0, 'dataset.sedna.io "ds-a" deleted\ndataset.sedna.io "ds-b" deleted\n')
    assert names() == ["ds-c", "ds-d"]

    code, _, err = run(capsys, "get", "ds", "ds-c", "-l", "app=demo", "--server", server)
    assert code == 2 and "name cannot be provided when a selector is specified" in err
    code, _, err = run(capsys, "get", "ds", "-l", "app in demo", "--server", server)
    assert code == 2 and "unable to parse requirement" in err and len(err.splitlines()) == 1


def test_describe_a_kind_without_a_name_describes_every_object_of_it(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "describe", "ds", "--server", server)
    assert (code, out, err) == (0, "", "No resources found in default namespace.\n")
    client = Client(server)
    for name in ("ds-a", "ds-b"):
        client.apply(dataset(name))
    client.apply(dataset("ds-x", namespace="other"))
    client.apply(yaml.safe_load(JOB.replace("name: ds1", "name: ds-a")))

    code, out, _ = run(capsys, "describe", "ds", "--server", server)
    described = [line.split()[1] for line in out.splitlines() if line.startswith("Name:")]
    assert code == 0 and described == ["ds-a", "ds-b"]
    assert out.count("Nodes Involved:") == 2
    code, out, _ = run(capsys, "describe", "ds", "-A", "--server", server)
    assert [line.split()[1] for line in out.splitlines() if line.startswith("Name:")] == [
        "ds-a",
        "ds-b",
        "ds-x",
    ]
    code, out, _ = run(capsys, "describe", "ll/job1", "ds/ds-b", "--server", server)
    assert code == 0 and [line.split()[1] for line in out.splitlines() if line.startswith("Name:")] == [
        "job1",
        "ds-b",
    ]
    assert "Conditions:" in out


def test_delete_all_deletes_every_object_of_a_kind_in_the_namespace(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Client(server)
    for name in ("ds-a", "ds-b"):
        client.apply(dataset(name))
    client.apply(dataset("ds-x", namespace="other"))

    code, _, err = run(capsys, "delete", "ds", "--server", server)
    assert code == 2 and "no name was specified" in err
    code, _, err = run(capsys, "delete", "ds", "ds-a", "--all", "--server", server)
    assert code == 2 and "not both" in err
    assert len(client.list("Dataset", None)) == 3  # a refused delete deletes nothing

    code, out, _ = run(capsys, "delete", "ds", "--all", "--server", server)
    assert (code, out) == (0, 'dataset.sedna.io "ds-a" deleted\ndataset.sedna.io "ds-b" deleted\n')
    assert [o["metadata"]["name"] for o in client.list("Dataset", None)] == ["ds-x"]
    code, out, err = run(capsys, "delete", "ds", "--all", "--server", server)
    assert (code, out, err) == (0, "", "No resources found in default namespace.\n")
    code, out, _ = run(capsys, "delete", "ds/ds-x", "-n", "other", "--server", server)
    assert (code, out) == (0, 'dataset.sedna.io "ds-x" deleted\n')


class Lines:
    """The lines a child process prints, read on a thread so that the test waits with deadlines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stdout is not None
        stdout = proc.stdout
        self._thread = threading.Thread(target=lambda: self.lines.extend(stdout), daemon=True)
        self._thread.start()

    def wait(self, count: int, what: str) -> list[str]:
        wait_for(lambda: len(self.lines) >= count or self.proc.poll() is not None, timeout=20, what=what)
        assert len(self.lines) >= count, f"{what}: exited {self.proc.returncode} after {self.lines}"
        return [line.rstrip("\n") for line in self.lines]


def lifelong(*args: str, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lifelong", *args], text=True, stderr=subprocess.PIPE, **popen
    )


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode, err


def test_get_watch_prints_the_list_then_each_change(gm: GMService, server: str) -> None:
    client = Client(server)
    client.apply(dataset("ds-a"))
    proc = lifelong(
        "get", "ds", "-w", "--output-watch-events", "--watch-interval", "0.1", "--server", server,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        seen = Lines(proc)
        lines = seen.wait(2, "the header and the listed object")
        assert lines[0].split() == ["EVENT", "NAME", "NODE", "SAMPLES", "AGE"]
        assert lines[1].split()[:3] == ["ADDED", "ds-a", "node-a"]
        client.apply(dataset("ds-b"))
        assert seen.wait(3, "ds-b added")[2].split()[:2] == ["ADDED", "ds-b"]
        gm.store.update_status("Dataset", "default", "ds-a", {"numberOfSamples": 42})
        assert seen.wait(4, "ds-a's new status")[3].split()[:4] == ["MODIFIED", "ds-a", "node-a", "42"]
        client.delete("Dataset", "default", "ds-b")
        assert seen.wait(5, "ds-b deleted")[4].split()[:2] == ["DELETED", "ds-b"]
        assert len(seen.lines) == 5  # each change once
    finally:
        code, err = interrupt(proc)
    assert code == 130 and "Traceback" not in err, err


def test_get_watch_only_a_named_object_as_json(gm: GMService, server: str) -> None:
    client = Client(server)
    client.apply(dataset("ds-a"))
    client.apply(dataset("ds-b"))
    template = 'jsonpath={.metadata.name}={.status.numberOfSamples}{"\\n"}'
    proc = lifelong(
        "get", "ds", "ds-a", "--watch-only", "-o", template, "--watch-interval", "0.1", "--server", server,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        seen = Lines(proc)
        changed = iter(range(1, 1000))

        def change() -> bool:  # change both until the watch (started after its list) sees one
            n = next(changed)
            gm.store.update_status("Dataset", "default", "ds-b", {"numberOfSamples": n})  # not watched
            gm.store.update_status("Dataset", "default", "ds-a", {"numberOfSamples": n})
            try:
                wait_for(lambda: seen.lines or proc.poll() is not None, timeout=0.5, what="a line")
            except DeadlineExceeded:
                return False
            return True

        wait_for(change, timeout=20, interval=0, what="a change of ds-a printed")
        lines = seen.wait(1, "ds-a's change")
        assert all(line.startswith("ds-a=") for line in lines), lines  # not the list, not ds-b
    finally:
        code, err = interrupt(proc)
    assert code == 130 and "Traceback" not in err, err
    done = subprocess.run(
        [sys.executable, "-m", "lifelong", "get", "ll,ds", "-w", "--server", server],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "single resource type to watch" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "lifelong", "get", "ds", "-w", "--request-timeout", "0.5", "--server", server],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr  # watched half a second, then ended
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["NAME", "ds-a", "ds-b"]


def test_output_piped_into_head_ends_quietly(server: str) -> None:
    """``lifelong get ds -o json | head -n 1``: more output than the pipe holds, so the client
    writes after head has gone; it ends with 141 (128 + SIGPIPE) and says nothing."""
    big = dataset("ds-big")
    big["metadata"]["annotations"] = {"note": "x" * 200_000}  # over the 64 KiB a pipe buffers
    Client(server).apply(big)
    lifelong_cmd = shlex.join(
        [sys.executable, "-m", "lifelong", "get", "ds", "-o", "json", "--server", server]
    )
    done = subprocess.run(
        ["bash", "-c", f'{lifelong_cmd} | head -n 1; echo "status=${{PIPESTATUS[0]}}"'],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.stdout == "{\nstatus=141\n" and done.stderr == "", done.stderr


def test_output_into_a_pipe_closed_before_it_is_written_ends_quietly(server: str) -> None:
    Client(server).apply(dataset("ds-a"))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the client writes its first byte
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lifelong", "get", "ds", "-o", "name", "--server", server],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a closed stdout ends a command quietly; another BrokenPipeError (a socket of the
    GM's, say) is a failure and is raised."""
    from lifelong.client import commands

    def broken(args: Any) -> int:
        raise BrokenPipeError("a socket, not stdout")

    monkeypatch.setattr(commands, "cmd_get", broken)
    with pytest.raises(BrokenPipeError):
        main(["get", "ll"])


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
