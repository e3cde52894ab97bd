"""Which nodes need a LifelongLearningJob. Pure; no I/O.

Every node that takes part (docs/protocol.md): the Dataset's node (it watches the data and fires
the trigger), and the nodes named by the train, eval and deploy templates (``spec.nodeName``)
- including the deploy (inference) node, which upstream Sedna forgets.
"""

from __future__ import annotations

from typing import Any

from lifelong.common.stages import Stage

_SPECS = {Stage.TRAIN: "trainSpec", Stage.EVAL: "evalSpec", Stage.DEPLOY: "deploySpec"}


def template_of(job: dict[str, Any], stage: Stage) -> dict[str, Any]:
    """The pod template of ``stage`` as the user gave it (``{}`` if missing)."""
    spec = job.get("spec", {}).get(_SPECS[stage], {}) or {}
    template = spec.get("template") or {}
    return template if isinstance(template, dict) else {}


def template_node(template: dict[str, Any]) -> str | None:
    node = (template.get("spec") or {}).get("nodeName")
    return node if isinstance(node, str) and node else None


def dataset_node(dataset: dict[str, Any] | None) -> str | None:
    if not dataset:
        return None
    node = (dataset.get("spec") or {}).get("nodeName")
    return node if isinstance(node, str) and node else None


def job_nodes(job: dict[str, Any], dataset: dict[str, Any] | None) -> list[str]:
    """The nodes that must hold ``job``: the dataset's node first, then train, eval, deploy."""
    nodes: list[str] = []
    candidates = [dataset_node(dataset)] + [template_node(template_of(job, s)) for s in _SPECS]
    for node in candidates:
        if node is not None and node not in nodes:
            nodes.append(node)
    return nodes
