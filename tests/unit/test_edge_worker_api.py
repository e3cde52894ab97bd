"""The LC's worker API (``lifelong.edge.worker_api``) over real HTTP on a free port: a post is
parsed by its model before it is kept; a body the model refuses gets 400 naming the field, is
counted and keeps nothing, and the next good post is still taken."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lifelong.edge.db import Store
from lifelong.edge.worker_api import WorkerAPI


@pytest.fixture
def api(tmp_path: Path) -> Iterator[WorkerAPI]:
    store = Store(tmp_path / "lc.db", sync="normal")
    server = WorkerAPI(store, "127.0.0.1", 0)
    server.start()
    yield server
    server.stop()
    store.close()


def post(api: WorkerAPI, worker: str, body: Any) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{api.port}/sedna/workers/{worker}/info",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


@pytest.mark.parametrize(
    ("body", "field"),
    [({"namespace": 5}, "namespace"), ({"ownerName": ["j1"]}, "ownerName"), ([1, 2], "must be a mapping")],
)
def test_a_post_the_model_refuses_gets_400_naming_the_field_and_keeps_nothing(
    api: WorkerAPI, body: Any, field: str
) -> None:
    code, answer = post(api, "j1-train-1", body)
    assert code == 400 and field in answer["error"], answer
    assert api.refused == 1 and api.received == 0
    assert api.store.pending_info() == []
    # the next good post is still taken, kept exactly as posted
    good = {"namespace": "default", "ownerName": "j1", "status": "completed", "extra": {"a": [1]}}
    assert post(api, "j1-train-1", good) == (200, {"message": "ok"})
    kept = api.store.pending_info()
    assert [(ns, worker, job, info) for _, ns, worker, job, info in kept] == [
        ("default", "j1-train-1", "j1", good)
    ]
