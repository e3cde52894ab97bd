"""Concurrent applies over the GM's HTTP API share one store commit (``cloud/applies.py``), and
each request still gets its own answer: created, configured, unchanged, or its own error.

A real GM API server on a loopback port, httpx clients on threads; the GM's bus is a stand-in
that sends nothing (the bus is not what is tested here).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.gm_inproc import DATASET, NoBus, job_manifest
from harness.waiting import wait_for

from lifelong.cloud.api_server import ApiServer
from lifelong.cloud.service import GMService, GMSettings
from lifelong.cloud.stores.sqlite import SqliteStore


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[GMService]:
    settings = GMSettings(
        broker="mqtt://127.0.0.1:1", store=f"sqlite:{tmp_path / 's.db'}", api_port=0, prefix="g/v1"
    )
    service = GMService(settings, bus=NoBus())
    service.start_controllers()
    yield service
    service.stop()


def dataset(name: str, url: str = "/data/ds.txt") -> dict[str, Any]:
    obj = copy.deepcopy(DATASET)
    obj["metadata"]["name"] = name
    obj["spec"]["url"] = url
    return obj


def test_concurrent_applies_share_a_commit_and_each_gets_its_own_answer(svc: GMService) -> None:
    assert isinstance(svc.api, ApiServer) and isinstance(svc.store, SqliteStore)
    group = svc.api.app.api.applies
    base = f"http://127.0.0.1:{svc.api.port}"
    with httpx.Client(base_url=base) as c:
        assert c.post("/api/v1/apply", json=dataset("same")).json()["result"] == "created"
        assert c.post("/api/v1/apply", json=dataset("changed")).json()["result"] == "created"
    requests = [
        ("same", dataset("same")),  # unchanged
        ("changed", dataset("changed", "/data/other.txt")),  # configured
        *((f"new-{i}", dataset(f"new-{i}")) for i in range(4)),  # created
        ("invalid", job_manifest("bad-job", "no-such-dataset")),  # its own validation error
    ]  # fewer than the server's request threads (8), so that all are in at once
    groups = group.groups
    clients = [httpx.Client(base_url=base, timeout=30) for _ in requests]
    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            with svc.store.db.locked():
                # The store is held: the first request to write waits on it with what it took,
                # and every other valid one queues behind it, for the next group.
                futures = [
                    pool.submit(client.post, "/api/v1/apply", json=obj)
                    for client, (_, obj) in zip(clients, requests, strict=True)
                ]
                wait_for(lambda: group.pending() == len(requests) - 1, what="the valid requests queued")
            answers = {name: f.result(timeout=30) for (name, _), f in zip(requests, futures, strict=True)}
    finally:
        for client in clients:
            client.close()
    invalid = answers["invalid"]
    assert invalid.status_code == 400, invalid.text
    assert "spec.dataset.name" in invalid.json()["error"] and "no-such-dataset" in invalid.json()["error"]
    results = {name: a.json().get("result") for name, a in answers.items() if name != "invalid"}
    assert results == {
        "same": "unchanged",
        "changed": "configured",
        **{f"new-{i}": "created" for i in range(4)},
    }
    assert answers["changed"].json()["object"]["spec"]["url"] == "/data/other.txt"
    for i in range(4):
        stored = svc.store.get("Dataset", "default", f"new-{i}")
        assert stored is not None
        assert answers[f"new-{i}"].json()["object"]["metadata"]["uid"] == stored["metadata"]["uid"]
    assert svc.store.get("LifelongLearningJob", "default", "bad-job") is None
    # 6 valid applies in two commits: the group the first writer took, then the rest together
    assert group.groups - groups <= 2


def test_an_apply_the_store_refuses_is_that_requests_error_and_the_group_goes_on(
    svc: GMService, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(svc.api, ApiServer) and isinstance(svc.store, SqliteStore)
    group = svc.api.app.api.applies
    store = svc.store
    real_apply = store.apply

    def apply(obj: dict[str, Any]) -> dict[str, Any]:
        stored = real_apply(obj)  # written inside the group's transaction, then it fails
        if obj["metadata"]["name"] == "poison":
            raise RuntimeError("injected store failure")
        return stored

    monkeypatch.setattr(store, "apply", apply)
    names = ["a", "poison", "b", "c"]
    results: dict[str, tuple[Any, BaseException | None]] = {}
    started = threading.Barrier(len(names) + 1)

    def call(name: str) -> None:
        started.wait(10)
        try:
            results[name] = (group.apply(("Dataset", "default", name), dataset(name)), None)
        except Exception as exc:
            results[name] = (None, exc)

    with store.db.locked():
        threads = [threading.Thread(target=call, args=(n,)) for n in names]
        for t in threads:
            t.start()
        started.wait(10)
        wait_for(lambda: group.pending() == len(names), what="the applies queued")
    for t in threads:
        t.join(30)
    assert isinstance(results["poison"][1], RuntimeError)
    assert store.get("Dataset", "default", "poison") is None  # rolled back alone
    for name in ("a", "b", "c"):
        (before, stored), error = results[name]
        assert error is None and before is None
        now = store.get("Dataset", "default", name)
        assert now is not None and now["metadata"]["uid"] == stored["metadata"]["uid"]
