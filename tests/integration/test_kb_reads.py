"""The knowledge base's read methods the web console uses (``KnowledgeBase.tasks`` and
``KnowledgeBase.metrics``, ``cloud/kb/base.py``), alike on the local KB and on the remote
client against a real ``KBServer`` on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lifelong.cloud.kb.base import KBRefused, KnowledgeBase
from lifelong.cloud.kb.client import RemoteKnowledgeBase
from lifelong.cloud.kb.server import KBServer
from lifelong.cloud.kb.service import LocalKnowledgeBase

JOB = "default/job1"
INDEX = {
    "job": JOB,
    "round": 1,
    "seen_task": {
        "task_groups": [
            {
                "entry": "summer",
                "tasks": [{"entry": "summer-a", "attrs": {"season": "summer"}, "samples": 40}],
                "samples": 40,
                "model": {"url": "models/summer.pkl", "metrics": {"accuracy": 0.9}, "classes": [0, 1]},
            },
            {
                "entry": "winter",
                "tasks": [{"entry": "winter-a", "attrs": {"season": "winter"}, "samples": 12}],
                "samples": 12,
                "model": {"url": "models/winter.pkl", "metrics": {}},
                "transfer": {"from": "summer", "ratio": 0.7},
            },
        ]
    },
}


@pytest.fixture(params=["local", "remote"])
def kb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[KnowledgeBase, LocalKnowledgeBase]]:
    """(the KB under test, the local KB behind it to fill)."""
    if request.param == "local":
        local = LocalKnowledgeBase.open(tmp_path / "kb")
        yield local, local
        local.close()
        return
    server = KBServer(tmp_path / "kb", "127.0.0.1", 0)
    server.start()
    client = RemoteKnowledgeBase(server.url, attempts=1)
    try:
        yield client, server.kb
    finally:
        client.close()
        server.stop()


def test_tasks_and_metrics_through_the_protocol(kb: tuple[KnowledgeBase, LocalKnowledgeBase]) -> None:
    under_test, local = kb
    with pytest.raises(KBRefused):
        under_test.tasks(JOB)
    with pytest.raises(KBRefused):
        under_test.metrics(JOB)
    local.post_index(INDEX)
    local.post_metrics({"job": JOB, "round": 1, "stage": "eval", "scores": {"summer": {"accuracy": 0.8}}})
    local.post_metrics({"job": JOB, "round": 2, "stage": "train", "scores": {"winter": {"accuracy": 0.4}}})
    tasks = under_test.tasks(JOB)
    assert tasks["version"] == 1
    groups = {g["entry"]: g for g in tasks["taskGroups"]}
    assert groups["summer"]["model"]["metrics"] == {"accuracy": 0.9}
    assert [t["entry"] for t in groups["summer"]["tasks"]] == ["summer-a"]
    assert groups["winter"]["transfer"] == {"from": "summer", "ratio": 0.7}
    metrics = under_test.metrics(JOB)
    assert metrics["rounds"] == [1, 2]
    assert metrics["scores"] == {
        "1": {"summer": {"eval": {"accuracy": 0.8}}},
        "2": {"winter": {"train": {"accuracy": 0.4}}},
    }
