"""The worker API's samples route (``POST /lifelong/v1/jobs/{ns}/{job}/samples``) in-process,
through httpx's WSGI transport: a post from another host is refused (403) and counted, which a
socket on loopback cannot show; from this host the same post is taken and split into reports."""

from __future__ import annotations

from pathlib import Path

import httpx

from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox
from lifelong.edge.worker_api import JOB_KIND, WorkerAPI

PATH = "/lifelong/v1/jobs/default/j1/samples"


def test_samples_from_another_host_are_refused_and_from_this_host_split(tmp_path: Path) -> None:
    store = Store(tmp_path / "lc.db", sync="normal")
    api = WorkerAPI(store, Outbox(store), "127.0.0.1", 0, max_report=4096)  # never started
    store.put_resource(JOB_KIND, "default", "j1", "1", {"kind": JOB_KIND, "metadata": {"name": "j1"}})
    body = {"samples": [{"id": f"s{i}", "row": {"path": f"{i}.png", "x": "y" * 100}} for i in range(60)]}
    try:
        for peer, code in (("10.1.2.3", 403), ("127.0.0.1", 200)):
            transport = httpx.WSGITransport(app=api.app, remote_addr=peer)
            with httpx.Client(transport=transport, base_url="http://lc") as c:
                answer = c.post(PATH, json=body)
                assert answer.status_code == code, answer.text
        assert answer.json() == {"accepted": 60}
        assert api.snapshot()["forbidden"] == 1 and api.snapshot()["stored"] == 1
        assert api.samples_snapshot() == {"accepted": 60, "refused": 0}  # 403 comes before the body
        reports = api.outbox.table.after(0, 100)
        assert len(reports) > 1 and all(e.kind == "UnseenSamples" and e.name == "j1" for e in reports)
        assert [s["id"] for e in reports for s in e.body["samples"]] == [f"s{i}" for i in range(60)]
    finally:
        api.stop()
        store.close()
