"""What tests of an in-process GM (``GMService`` with a store, no broker) share: a bus that
sends nowhere and a Dataset to apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lifelong.cloud.kb.base import KnowledgeBase
from lifelong.cloud.service import GMService, GMSettings

DATASET = {
    "apiVersion": "sedna.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "ds1", "namespace": "default"},
    "spec": {"url": "/data/ds.txt", "format": "txt", "nodeName": "node-a"},
}


def job_manifest(name: str, dataset: str, node: str = "node-a") -> dict[str, Any]:
    """A LifelongLearningJob on ``dataset`` whose three workers run on ``node``."""
    template = {"spec": {"nodeName": node, "containers": [{"name": "w", "image": "x"}]}}
    trigger = {
        "checkPeriodSeconds": 1,
        "condition": {"operator": ">", "threshold": 5.0, "metric": "num_of_samples"},
    }
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "LifelongLearningJob",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"name": dataset, "trainProb": 0.8},
            "trainSpec": {"template": template, "trigger": trigger},
            "evalSpec": {"template": template},
            "deploySpec": {"template": template},
            "outputDir": "/out",
        },
    }


class NoBus:
    """A GM bus that publishes nowhere (the tests look at the API, not the bus)."""

    def publish(self, *args: Any, **kwargs: Any) -> object:
        return object()

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass


def api_gm(tmp_path: Path, kb: KnowledgeBase | None, token_file: str | None = None) -> GMService:
    """A GM with its SQLite store in ``tmp_path``, its API on a free loopback port (bearer tokens
    from ``token_file``, if given), the knowledge base ``kb``, no broker, its controllers started."""
    svc = GMService(
        GMSettings(
            broker="mqtt://127.0.0.1:1",
            store=f"sqlite:{tmp_path / 's.db'}",
            api_port=0,
            prefix="c/v1",
            token_file=token_file,
        ),
        bus=NoBus(),
        kb=kb,
    )
    svc.start_controllers()
    return svc
