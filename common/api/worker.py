"""``Worker`` (``lifelong.io/v1``, internal, not a CRD): one stage's worker an LC must run.

Standalone mode only. The GM's edge-process runtime (``cloud/runtimes/edge_process.py``) makes
one per stage and round, named ``{job}-{stage lowercased}-{round}``, and sends it down to the
node named by its template's ``spec.nodeName``; the LC parses it with this model before it
stores it and runs the template's first container as a local process. Shape (docs/protocol.md):

    apiVersion: lifelong.io/v1
    kind: Worker
    metadata: {name, namespace, resourceVersion, labels, ...}
    spec: {job, stage: Train|Eval|Deploy, round, template: <pod template as given>,
           env: {<Sedna worker env vars>}}
    status: {phase, exitCode, message, output, node}   (the GM's record of the LC's reports)
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import ConfigDict, Field, StrictInt, StrictStr

from lifelong.common.api.meta import ApiModel, DnsSubdomain, Resource
from lifelong.common.api.template import PodTemplate, template_node_name
from lifelong.common.stages import Stage

WORKER_API_VERSION: Final = "lifelong.io/v1"

WorkerPhaseName = Literal["Pending", "Running", "Succeeded", "Failed"]


class WorkerSpec(ApiModel):
    """What the LC runs: the job's stage and round, its pod template, the Sedna environment."""

    job: DnsSubdomain
    """The LifelongLearningJob (same namespace) the worker belongs to."""
    stage: Stage
    round: Annotated[StrictInt, Field(ge=0)]
    template: PodTemplate
    """The stage's pod template, as the job gives it."""
    env: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    """The Sedna worker environment variables for this stage."""


class WorkerStatus(ApiModel):
    """The last phase the node reported (kept by the GM; the LC does not read it)."""

    model_config = ConfigDict(extra="allow")

    phase: WorkerPhaseName | None = None
    exit_code: StrictInt | None = None
    message: StrictStr | None = None
    output: dict[StrictStr, Any] | None = None
    node: StrictStr | None = None


class Worker(Resource[WorkerSpec, WorkerStatus]):
    """A worker of one stage and round of a job, to run on the node its template names.

    A ``Resource`` like the sedna.io kinds (``key``, ``name``, ``namespace``), but of the
    internal group ``lifelong.io/v1``; it is not one of ``RESOURCE_TYPES`` (no CRD, never applied
    by users)."""

    KIND: ClassVar[str] = "Worker"
    PLURAL: ClassVar[str] = "workers"

    api_version: Literal["lifelong.io/v1"] = WORKER_API_VERSION  # type: ignore[assignment]
    kind: Literal["Worker"] = "Worker"

    @property
    def node_name(self) -> str | None:
        """The node the worker runs on (its template's ``spec.nodeName``)."""
        return template_node_name(self.spec.template)
