"""One bad item never stops an LC loop: the dataset step and the manager's step over jobs, each
with one poisoned item among good ones, on a real SQLite state (no broker: the loops are called
directly). The bad item is logged once with its key, counted in
``lifelong_lc_item_failures_total{loop}`` and skipped; the good ones are all processed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from harness.lc_objects import NS, cond, dataset, job, offline_settings
from prometheus_client import generate_latest

from lifelong.edge.dataset_monitor import DatasetMonitor
from lifelong.edge.db import Store
from lifelong.edge.manager import Manager
from lifelong.edge.metrics import make_registry
from lifelong.edge.outbox import Outbox
from lifelong.edge.service import LocalController

NODE = "node-a"


def _mentions(caplog: pytest.LogCaptureFixture, key: str) -> int:
    return sum(1 for r in caplog.records if key in r.getMessage() and r.levelno >= logging.ERROR)


@pytest.fixture
def lc(tmp_path: Path) -> Iterator[LocalController]:
    c = LocalController(offline_settings(tmp_path, NODE))
    yield c
    c.store.close()


def test_the_dataset_step_goes_on_past_a_poisoned_dataset(
    lc: LocalController, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The case: a Dataset whose spec.url is 123, sorted before the good ones.
    bad = dataset("a-bad", NODE, tmp_path / "x.txt")
    bad["spec"]["url"] = 123
    lc.store.put_resource("Dataset", NS, "a-bad", "1", bad)
    for i, name in enumerate(("ds1", "ds2")):
        path = tmp_path / f"{name}.txt"
        path.write_text("".join(f"s{j}\n" for j in range(3 + i)))
        lc.store.put_resource("Dataset", NS, name, str(2 + i), dataset(name, NODE, path))
    caplog.set_level(logging.INFO)
    for _ in range(3):
        lc.control_step()
    assert lc.store.get_record("datasets", NS, "ds1")["reported"] == 3
    assert lc.store.get_record("datasets", NS, "ds2")["reported"] == 4
    assert lc.store.get_record("datasets", NS, "a-bad") is None
    assert _mentions(caplog, "datasets default/a-bad") == 1  # logged once, not at every poll
    assert any("spec.url" in r.getMessage() for r in caplog.records if "a-bad" in r.getMessage())
    assert lc.failures.snapshot() == {"datasets": 1}
    text = generate_latest(make_registry(lc.snapshot)).decode()
    assert 'lifelong_lc_item_failures_total{loop="datasets"} 1.0' in text


def test_the_manager_goes_on_past_poisoned_jobs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path / "lc.db", sync="normal")
    box = Outbox(store)
    data = tmp_path / "d.txt"
    data.write_text("".join(f"s{i}\n" for i in range(10)))
    store.put_resource("Dataset", NS, "ds", "1", dataset("ds", NODE, data))
    bad_ds = dataset("bad-ds", NODE, data)
    bad_ds["spec"]["url"] = 123
    store.put_resource("Dataset", NS, "bad-ds", "2", bad_ds)
    out = tmp_path / "out"
    # refused by the model: a threshold that is not a number
    refused = job("a-refused", NODE, "ds", out, [cond("Train", "Waiting")])
    refused["spec"]["trainSpec"]["trigger"]["condition"]["threshold"] = "many"
    store.put_resource("LifelongLearningJob", NS, "a-refused", "3", refused)
    # its Dataset is refused by the model
    store.put_resource(
        "LifelongLearningJob", NS, "b-bad-dataset", "4", job("b-bad-dataset", NODE, "bad-ds", out, [])
    )
    # fails when it fires: its outputDir lies under a file
    (tmp_path / "a-file").write_text("x")
    broken = job("c-broken", NODE, "ds", tmp_path / "a-file" / "out", [cond("Train", "Waiting")])
    store.put_resource("LifelongLearningJob", NS, "c-broken", "5", broken)
    for i in range(3):
        name = f"good{i}"
        store.put_resource("LifelongLearningJob", NS, name, str(6 + i), job(name, NODE, "ds", out / name, []))
    mono = [0.0]

    def tick() -> float:
        mono[0] += 1.0
        return mono[0]

    caplog.set_level(logging.INFO)
    m = Manager(store, box, NODE, DatasetMonitor(), local_now=lambda: datetime(2026, 1, 1, 12), mono=tick)
    for _ in range(4):
        m.step()
    box.window = 1 << 20
    fired = sorted(e.name for e in box.due() if e.body.get("event") == "ready")
    assert fired == ["good0", "good1", "good2"]
    for key in ("a-refused", "b-bad-dataset", "c-broken"):
        assert _mentions(caplog, f"jobs default/{key}") == 1, key  # once, with its key
    assert m.failures.snapshot() == {"jobs": 3}
    evaluated = m.evaluated
    m.step()
    assert m.evaluated - evaluated == 1  # only c-broken is tried again; the refused ones wait for a change
    store.close()


def test_the_worker_reports_go_on_past_a_damaged_worker_record(
    lc: LocalController, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker record that cannot make a valid report (a damaged database, say) is logged once
    and skipped; the finished workers after it are still reported, through the model."""
    good = {"job": "j", "stage": "Train", "round": 1, "phase": "Failed", "exitCode": 3, "message": "exit 3"}
    records = {
        "a-damaged": {**good, "round": "one"},
        "j-train-1": good,
        "j-train-2": {**good, "round": 2, "phase": "Succeeded", "exitCode": 0, "message": ""},
    }
    for i, (name, rec) in enumerate(records.items()):
        # the Worker objects stay wanted, so the runtime keeps their finished records
        lc.store.put_resource("Worker", NS, name, str(i + 1), {"kind": "Worker", "metadata": {"name": name}})
        lc.store.put_record("workers", NS, name, rec)
    caplog.set_level(logging.INFO)
    for _ in range(3):
        lc.workers.reconcile()
    lc.outbox.window = 1 << 20
    reported = {e.name: e.body for e in lc.outbox.due()}
    assert sorted(reported) == ["j-train-1", "j-train-2"]
    assert reported["j-train-2"] == {
        "job": "j",
        "stage": "Train",
        "round": 2,
        "phase": "Succeeded",
        "exitCode": 0,
        "message": "",
        "output": {"models": []},
    }
    assert _mentions(caplog, "worker-reports default/a-damaged") == 1
    assert any("round" in r.getMessage() for r in caplog.records if "a-damaged" in r.getMessage())
    assert lc.failures.snapshot() == {"worker-reports": 1}
