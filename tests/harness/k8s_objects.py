"""sedna.io objects as a user writes them for the Kubernetes-mode tests (``tests/unit/test_k8s_*.py``):
a LifelongLearningJob with one Pod template per stage, and a Dataset, as plain dicts."""

from __future__ import annotations

from typing import Any

TRIGGER = {"condition": {"operator": ">", "threshold": 5, "metric": "num_of_samples"}}


def job(
    name: str,
    dataset_name: str = "ds",
    nodes: tuple[str, str, str] = ("edge-1", "edge-1", "edge-1"),
    *,
    train_prob: float = 0.8,
    trigger: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A LifelongLearningJob ``name`` of Dataset ``dataset_name``; train, eval, deploy on ``nodes``."""

    def template(node: str) -> dict[str, Any]:
        return {"spec": {"nodeName": node, "containers": [{"name": "w", "image": "busybox"}]}}

    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "LifelongLearningJob",
        "metadata": meta,
        "spec": {
            "dataset": {"name": dataset_name, "trainProb": train_prob},
            "trainSpec": {"template": template(nodes[0]), "trigger": trigger or TRIGGER},  # the CRD needs one
            "evalSpec": {"template": template(nodes[1])},
            "deploySpec": {"template": template(nodes[2])},
            "outputDir": "/out",
        },
    }


def dataset(name: str = "ds", node: str = "edge-1", url: str = "/data/train.txt") -> dict[str, Any]:
    """A Dataset ``name`` on ``node``."""
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"url": url, "format": "txt", "nodeName": node},
    }
