"""Which nodes need a LifelongLearningJob, for a stored job in wire form. Pure; no I/O.

Every node that takes part (docs/protocol.md): the Dataset's node (it watches the data and fires
the trigger), and the nodes named by the train, eval and deploy templates (``spec.nodeName``)
- including the deploy (inference) node, which upstream Sedna forgets. The rule itself is
``node_roles`` of ``lifelong.common.api``; a parsed job has it as
``LifelongLearningJob.node_names``, which the controller's reconcile uses. These functions apply
the same rule to a job the report paths hold in wire form, as the store returned it.
"""

from __future__ import annotations

from typing import Any

from lifelong.common.api import dataset_node, node_names, wire_templates
from lifelong.common.stages import Stage


def template_of(job: dict[str, Any], stage: Stage) -> dict[str, Any]:
    """The pod template of ``stage`` as the user gave it (``{}`` if missing)."""
    return dict(wire_templates(job)[stage])


def job_nodes(job: dict[str, Any], dataset: dict[str, Any] | None) -> list[str]:
    """The nodes that must hold ``job``: the dataset's node first, then train, eval, deploy."""
    return node_names(wire_templates(job), dataset_node(dataset))
